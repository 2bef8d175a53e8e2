//! Per-call limits: the time limit (epoch interruption) and the memory cap.
//!
//! Time: one ticker thread per host increments the engine's epoch every
//! [`TICK`] while at least one call is running, and sleeps otherwise (a shim
//! is idle almost always). A call's store gets a deadline of
//! `ceil(limit / TICK)` ticks, so it traps between `limit - TICK` and `limit`
//! after it starts.
//!
//! Memory: [`MemoryCap`] is the store's `ResourceLimiter`: growing any memory
//! past the cap traps at once, with [`MemoryCapExceeded`] as the error so the
//! host can say so.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::Engine;

/// The epoch tick.
pub const TICK: Duration = Duration::from_millis(2);

/// Epoch ticks for a time limit (at least 1).
pub fn deadline_ticks(limit: Duration) -> u64 {
    (limit.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1)
}

#[derive(Default)]
struct TickerState {
    active: usize,
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
                loop {
                    if st.shutdown {
                        return;
                    }
                    if st.active == 0 {
                        st = cvar.wait(st).unwrap_or_else(|e| e.into_inner());
                        continue;
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
        lock.lock().unwrap_or_else(|e| e.into_inner()).active += 1;
        cvar.notify_one();
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

    #[test]
    fn ticks_round_up() {
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 50);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 1);
        assert_eq!(deadline_ticks(Duration::from_micros(2001)), 2);
    }
}
