//! A persistent compute pool: the calling thread plus `n - 1` workers run the chunks of one
//! parallel region at a time.
//!
//! Two properties matter for inference on a small shared box:
//! - **No per-op cost beyond an atomic or two.** Workers spin briefly on a generation counter
//!   between regions (regions come every few microseconds during a step), then park on a condvar
//!   so an idle server burns no CPU.
//! - **Graceful under contention.** Work is split into many small chunks taken with
//!   `fetch_add`, and the caller takes chunks too. A worker that the OS has descheduled (another
//!   process took its core) simply takes no chunks; the caller finishes the region alone instead
//!   of waiting at a barrier for it, so 2 threads never fall below 1-thread speed.
//!
//! - **Backs off under contention.** Every few hundred regions the pool reads how many threads
//!   the kernel has runnable (`procs_running` in /proc/stat). When ours plus everyone else's
//!   exceed the CPUs, a worker would be descheduled mid-chunk and stall every region for a
//!   scheduler slice, so the caller runs regions alone until the CPUs free up. (Measured with a
//!   busy-loop process on the other core: 2 threads fell to 48 tok/s against 63 for 1 thread.
//!   A straggler-wait heuristic proved too noisy to tell contention from ordinary jitter.)
//!
//! We wrote this rather than use rayon: rayon's scope/join costs several microseconds per region
//! and its sleeping workers wake slowly, and a decode step here has ~120 regions.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(300);
/// How long the caller spins on unfinished chunks before it starts yielding its core.
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(50);
/// Regions between two checks of the system's runnable-thread count (~2 decode steps).
const CONTENTION_CHECK_REGIONS: u64 = 256;

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n_chunks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

struct Shared {
    generation: AtomicU64,
    /// The live job, or null between regions. Points into the caller's stack frame; valid while
    /// non-null and while `active` counts any worker that loaded it (see `run`).
    job: AtomicPtr<Job<'static>>,
    active: AtomicUsize,
    sleepers: Mutex<usize>,
    wake: Condvar,
    shutdown: AtomicBool,
}

/// Persistent compute workers that run parallel regions with the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Contention back-off state (only the owning thread calls `run`).
    regions: Cell<u64>,
    solo: Cell<bool>,
    contended_last: Cell<bool>,
    solo_spells: Cell<u64>,
    n_cpus: usize,
}

impl ThreadPool {
    /// A pool of `n_threads` including the caller (so `n_threads - 1` OS threads are spawned).
    pub fn new(n_threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n_threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("rill-compute-{i}"))
                    .spawn(move || worker_loop(&s))
                    .expect("spawning a compute thread")
            })
            .collect();
        Self {
            shared,
            workers,
            regions: Cell::new(0),
            solo: Cell::new(false),
            contended_last: Cell::new(false),
            solo_spells: Cell::new(0),
            n_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// How many times contention made the pool fall back to caller-only regions.
    pub fn solo_spells(&self) -> u64 {
        self.solo_spells.get()
    }

    /// Threads of a region: the workers plus the caller.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(chunk)` for every chunk in `0..n_chunks` across the pool; returns when all ran.
    pub fn run(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_chunks <= 1 {
            // Inline, and not counted as a region: the contention check's period stays in
            // decode steps whatever work they run inline.
            (0..n_chunks).for_each(f);
            return;
        }
        let region = self.regions.get() + 1;
        self.regions.set(region);
        if region.is_multiple_of(CONTENTION_CHECK_REGIONS) {
            self.check_contention();
        }
        if self.workers.is_empty() || self.solo.get() {
            (0..n_chunks).for_each(f);
            return;
        }
        let job = Job {
            f,
            n_chunks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        };
        let s = &*self.shared;
        // Publish. The lifetime is erased; `run` does not return before the job is retired and
        // no worker holds it (active == 0), so the reference never outlives the frame.
        s.job.store(
            (&job as *const Job<'_>).cast_mut().cast::<Job<'static>>(),
            SeqCst,
        );
        s.generation.fetch_add(1, SeqCst);
        {
            let sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        work_on(&job);
        // Wait for chunks other threads took.
        let start = Instant::now();
        while job.done.load(SeqCst) < n_chunks {
            if start.elapsed() < SPIN_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        s.job.store(std::ptr::null_mut(), SeqCst);
        while s.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

impl ThreadPool {
    /// Runs `f(first_row, rows)` over `data` (rows of `width` elements) in chunks of
    /// `chunk_rows` rows across the pool, each chunk's rows handed out mutably to one call
    /// (behind an uncontended lock, as the pool shares one closure).
    pub fn for_rows<T: Send>(
        &self,
        data: &mut [T],
        width: usize,
        chunk_rows: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        assert!(
            width > 0 && chunk_rows > 0,
            "rows and chunks of at least one element"
        );
        let chunks: Vec<Mutex<&mut [T]>> = data
            .chunks_mut(width * chunk_rows)
            .map(Mutex::new)
            .collect();
        self.run(chunks.len(), &|c| {
            let mut rows = chunks[c].lock().unwrap_or_else(|e| e.into_inner());
            f(c * chunk_rows, &mut rows)
        });
    }

    /// Decides between parallel and caller-only regions from the runnable-thread count.
    fn check_contention(&self) {
        let Some(running) = procs_running() else {
            return;
        };
        // Parked workers are not runnable; count them as if they were about to be.
        let ours_parked = if self.solo.get() {
            self.workers.len()
        } else {
            0
        };
        let contended = running + ours_parked > self.n_cpus;
        // Hysteresis: a transient kernel thread must not cost a whole solo spell, so two
        // contended checks in a row are needed to go solo; one clear check ends it.
        let was = self.contended_last.replace(contended);
        if contended && was && !self.solo.get() {
            self.solo.set(true);
            self.solo_spells.set(self.solo_spells.get() + 1);
        } else if !contended {
            self.solo.set(false);
        }
    }
}

/// Runnable threads system-wide, from /proc/stat (Linux); None elsewhere.
fn procs_running() -> Option<usize> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("procs_running "))
        .and_then(|v| v.trim().parse().ok())
}

fn work_on(job: &Job<'_>) {
    loop {
        let i = job.next.fetch_add(1, SeqCst);
        if i >= job.n_chunks {
            break;
        }
        (job.f)(i);
        job.done.fetch_add(1, SeqCst);
    }
}

fn worker_loop(s: &Shared) {
    let mut seen = s.generation.load(SeqCst);
    loop {
        // Wait for a new generation: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(256) && start.elapsed() > SPIN_BEFORE_PARK {
                let mut sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                while s.generation.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                    sleepers = s.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
                break;
            }
        }
        if s.shutdown.load(SeqCst) {
            return;
        }
        seen = s.generation.load(SeqCst);
        s.active.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst);
        if !p.is_null() {
            // SAFETY: non-null means the caller of `run` has not retired the job yet, and since
            // we incremented `active` before loading, `run` waits for us before returning.
            work_on(unsafe { &*p });
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self
                .shared
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer that parallel chunks use to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
// SAFETY: users guarantee chunks write disjoint indices (documented at each use).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// A pointer to `s`'s elements.
    pub fn new(s: &mut [T]) -> Self {
        Self(s.as_mut_ptr())
    }
    /// # Safety
    /// `i` in bounds of the original slice, and no other thread touches index `i` meanwhile.
    #[inline(always)]
    pub unsafe fn write(self, i: usize, v: T) {
        unsafe { self.0.add(i).write(v) }
    }
    /// # Safety
    /// As for `write`.
    #[inline(always)]
    pub unsafe fn read(self, i: usize) -> T
    where
        T: Copy,
    {
        unsafe { self.0.add(i).read() }
    }
    /// # Safety
    /// The range is in bounds and no other thread accesses it meanwhile.
    #[inline(always)]
    pub unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_chunk_exactly_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..20 {
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
            }
            assert!(hits.iter().all(|h| h.load(SeqCst) == 20), "n={n}");
        }
    }

    #[test]
    fn for_rows_hands_out_every_row_once_with_its_index() {
        let pool = ThreadPool::new(2);
        let width = 3;
        for (rows, chunk) in [(0usize, 4usize), (1, 4), (7, 4), (8, 4), (33, 32), (100, 1)] {
            let mut data = vec![usize::MAX; rows * width];
            pool.for_rows(&mut data, width, chunk, &|first, part| {
                assert!(part.len() <= chunk * width && part.len().is_multiple_of(width));
                for (i, row) in part.chunks_exact_mut(width).enumerate() {
                    for v in row.iter_mut() {
                        assert_eq!(*v, usize::MAX, "row {} written twice", first + i);
                        *v = first + i;
                    }
                }
            });
            let want: Vec<usize> = (0..rows).flat_map(|r| [r; 3]).collect();
            assert_eq!(data, want, "rows={rows} chunk={chunk}");
        }
    }

    #[test]
    fn survives_idle_parking() {
        let pool = ThreadPool::new(2);
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, SeqCst);
        });
        std::thread::sleep(Duration::from_millis(5)); // workers park
        pool.run(10, &|i| {
            sum.fetch_add(i, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 90);
    }
}
