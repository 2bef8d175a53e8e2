//! Per-call limits: the time limit (epoch interruption) and the memory cap.
//!
//! Time: one ticker thread per host increments the engine's epoch every
//! [`TICK`] while at least one call is running, and for [`IDLE_TICKS`] more
//! after the last one ends; then it parks until the next call (a shim is
//! idle almost always). A call only wakes the thread when it is parked, so
//! the calls of a burst (one create's plugins, creates in a row) pay no
//! wake-up syscall. A call's store gets a deadline of `ceil(limit / TICK)`
//! ticks, so it traps between `limit - TICK` and `limit` after it starts.
//!
//! Memory: [`MemoryCap`] is the store's `ResourceLimiter`: growing any memory
//! past the cap traps at once, with [`MemoryCapExceeded`] as the error so the
//! host can say so.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::Engine;

/// The epoch tick.
pub const TICK: Duration = Duration::from_millis(2);

/// Ticks the ticker keeps running after the last call ends before it parks.
pub const IDLE_TICKS: u32 = 25;

/// Epoch ticks for a time limit (at least 1).
pub fn deadline_ticks(limit: Duration) -> u64 {
    (limit.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1)
}

#[derive(Default)]
struct TickerState {
    active: usize,
    /// The thread waits on the condvar (a call must wake it).
    parked: bool,
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
                let mut idle = 0;
                loop {
                    if st.shutdown {
                        return;
                    }
                    if st.active > 0 {
                        idle = 0;
                    } else if idle >= IDLE_TICKS {
                        st.parked = true;
                        st = cvar.wait(st).unwrap_or_else(|e| e.into_inner());
                        st.parked = false;
                        idle = 0;
                        continue;
                    } else {
                        idle += 1;
                    }
                    drop(st);
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                    st = lock.lock().unwrap_or_else(|e| e.into_inner());
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker { state }
    }

    /// Keeps the ticker running while the guard lives (one per call).
    pub fn running(&self) -> TickerGuard<'_> {
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.active += 1;
        if st.parked {
            cvar.notify_one();
        }
        TickerGuard { ticker: self }
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
}

impl Drop for TickerGuard<'_> {
    fn drop(&mut self) {
        let (lock, _) = &*self.ticker.state;
        lock.lock().unwrap_or_else(|e| e.into_inner()).active -= 1;
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

    /// Runs the spinning function under a deadline of `ticks`; how long it
    /// took to be interrupted.
    fn spin(engine: &Engine, ticker: &EpochTicker, ticks: u64) -> Duration {
        let module = wasmtime::Module::new(engine, SPIN).unwrap();
        let mut store = wasmtime::Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        let started = std::time::Instant::now();
        let _running = ticker.running();
        store.set_epoch_deadline(ticks);
        let err = f.call(&mut store, ()).unwrap_err();
        assert_eq!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt)
        );
        started.elapsed()
    }

    /// A call is interrupted at its deadline whether the ticker is still
    /// running from the last call or has parked and must be woken.
    #[test]
    fn interrupts_when_running_and_after_parking() {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg).unwrap();
        let ticker = EpochTicker::start(&engine);
        let limit = Duration::from_millis(20);
        for pause in [Duration::ZERO, TICK * (IDLE_TICKS * 4)] {
            std::thread::sleep(pause);
            let took = spin(&engine, &ticker, deadline_ticks(limit));
            assert!(
                took >= limit - TICK && took < Duration::from_secs(2),
                "interrupted after {took:?} (limit {limit:?}, pause {pause:?})"
            );
        }
        assert!(ticker.state.0.lock().unwrap().active == 0);
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 50);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 1);
        assert_eq!(deadline_ticks(Duration::from_micros(2001)), 2);
    }
}
