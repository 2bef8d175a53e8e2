//! Per-call limits: the time limit (epoch interruption) and the memory cap.
//!
//! Time: each call's store traps (or asks its deadline callback, which
//! checks the call's own clock) at the engine's next epoch. One ticker
//! thread per host moves the epoch on only when a running call passes its
//! deadline, and then every [`TICK`] while such a call runs; otherwise it
//! sleeps until the earliest deadline of the calls running, or parks when
//! none runs. A call wakes the thread only when its deadline comes before
//! the thread's next wake-up (the first call of a burst; one create's
//! plugins, which share a limit, wake it once). It used to tick every 2 ms
//! while calls ran and for 50 ms after: 25 wake-ups of a thread around
//! every container's create on the service's CPUs.
//!
//! Memory: [`MemoryCap`] is the store's `ResourceLimiter`: growing any memory
//! past the cap traps at once, with [`MemoryCapExceeded`] as the error so the
//! host can say so.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// How often the epoch moves on while a call runs past its deadline (its
/// callback gave it more time: time spent in the host's store is not the
/// plugin's).
pub const TICK: Duration = Duration::from_millis(2);

#[derive(Default)]
struct TickerState {
    /// The deadlines of the calls running.
    deadlines: Vec<Instant>,
    /// When the thread wakes up next; `None`: parked until a call starts.
    wakes_at: Option<Instant>,
    shutdown: bool,
}

/// The epoch ticker. Dropping the last handle stops the thread.
pub struct EpochTicker {
    state: Arc<(Mutex<TickerState>, Condvar)>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let state = Arc::new((Mutex::new(TickerState::default()), Condvar::new()));
        let thread_state = Arc::clone(&state);
        // A weak engine reference would be nicer; Engine is a cheap Arc clone
        // and the thread exits on shutdown.
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("husk-plugin-epoch".into())
            .spawn(move || {
                let (lock, cvar) = &*thread_state;
                let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !st.shutdown {
                    let now = Instant::now();
                    st = match st.deadlines.iter().min().copied() {
                        None => {
                            st.wakes_at = None;
                            cvar.wait(st).unwrap_or_else(|e| e.into_inner())
                        }
                        Some(deadline) if deadline > now => {
                            st.wakes_at = Some(deadline);
                            cvar.wait_timeout(st, deadline - now)
                                .unwrap_or_else(|e| e.into_inner())
                                .0
                        }
                        Some(_) => {
                            engine.increment_epoch();
                            st.wakes_at = Some(now + TICK);
                            cvar.wait_timeout(st, TICK)
                                .unwrap_or_else(|e| e.into_inner())
                                .0
                        }
                    };
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker { state }
    }

    /// A call with this time limit starts: the epoch moves on once it is
    /// past it (the guard lives as long as the call). The call's store
    /// must have an epoch deadline of 1 (the next epoch).
    pub fn running(&self, limit: Duration) -> TickerGuard<'_> {
        let deadline = Instant::now() + limit;
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.deadlines.push(deadline);
        if st.wakes_at.is_none_or(|w| deadline < w) {
            cvar.notify_one();
        }
        TickerGuard {
            ticker: self,
            deadline,
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        cvar.notify_one();
    }
}

pub struct TickerGuard<'a> {
    ticker: &'a EpochTicker,
    deadline: Instant,
}

impl Drop for TickerGuard<'_> {
    fn drop(&mut self) {
        // The thread is not woken: it finds the call gone at its next
        // wake-up and parks.
        let (lock, _) = &*self.ticker.state;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = st.deadlines.iter().position(|d| *d == self.deadline) {
            st.deadlines.swap_remove(i);
        }
    }
}

/// The error a memory growth past the cap traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap_bytes} bytes exceeded (wanted {wanted_bytes})")]
pub struct MemoryCapExceeded {
    pub cap_bytes: usize,
    pub wanted_bytes: usize,
}

/// A store's resource limiter: memories up to `cap_bytes` each, tables up
/// to the pool's element limit.
pub struct MemoryCap {
    pub cap_bytes: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                cap_bytes: self.cap_bytes,
                wanted_bytes: desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 200_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(module (func (export "spin") (loop (br 0))))`
    const SPIN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type () -> ()
        0x03, 0x02, 0x01, 0x00, // one function of type 0
        0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export "spin"
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
    ];

    /// `(module (func (export "nop")))`
    const NOP: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type () -> ()
        0x03, 0x02, 0x01, 0x00, // one function of type 0
        0x07, 0x07, 0x01, 0x03, b'n', b'o', b'p', 0x00, 0x00, // export "nop"
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // an empty body
    ];

    /// Runs the spinning function with a time limit of `limit`; how long
    /// it took to be interrupted.
    fn spin(engine: &Engine, ticker: &EpochTicker, limit: Duration) -> Duration {
        let module = wasmtime::Module::new(engine, SPIN).unwrap();
        let mut store = wasmtime::Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        let started = Instant::now();
        let _running = ticker.running(limit);
        store.set_epoch_deadline(1);
        let err = f.call(&mut store, ()).unwrap_err();
        assert_eq!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt)
        );
        started.elapsed()
    }

    /// A call is interrupted at its deadline whether the ticker is parked
    /// or already waits for another call's later deadline, and the epoch
    /// does not move while calls run within their limits.
    #[test]
    fn interrupts_at_the_deadline_and_only_then() {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg).unwrap();
        let ticker = EpochTicker::start(&engine);
        let limit = Duration::from_millis(20);
        let took = spin(&engine, &ticker, limit);
        assert!(
            took >= limit && took < Duration::from_secs(2),
            "interrupted after {took:?} (limit {limit:?}), parked ticker"
        );
        {
            // A long call in flight: the ticker sleeps until its deadline,
            // and the short one's earlier deadline must wake it.
            let _long = ticker.running(Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(10));
            let took = spin(&engine, &ticker, limit);
            assert!(
                took >= limit && took < Duration::from_secs(2),
                "interrupted after {took:?} (limit {limit:?}), ticker waiting"
            );
        }
        // Calls within their limits: the epoch does not move (no tick while
        // calls run, none after): a function entered afterwards under a
        // deadline of the next epoch still runs.
        std::thread::sleep(Duration::from_millis(50));
        let module = wasmtime::Module::new(&engine, NOP).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let nop = instance
            .get_typed_func::<(), ()>(&mut store, "nop")
            .unwrap();
        store.set_epoch_deadline(1);
        for _ in 0..5 {
            let _running = ticker.running(Duration::from_millis(100));
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            nop.call(&mut store, ()).is_ok(),
            "the epoch moved without a call past its deadline"
        );
        assert!(ticker.state.0.lock().unwrap().deadlines.is_empty());
    }
}
