//! The store's lock: `flock(2)` on `<root>/lock`. Writers (import, rmi,
//! prune) take it exclusive, readers shared, so two imports never
//! interleave and prune never sweeps what an import is about to name.
//! flock locks belong to the open file description, so two threads of one
//! process exclude each other too; the kernel drops the lock if the
//! process dies.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::error::{ImageError, Result};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
}

impl StoreLock {
    /// Blocks until the lock at `path` is held exclusively.
    pub fn exclusive(path: &Path) -> Result<StoreLock> {
        Self::take(path, FlockArg::LockExclusive)
    }

    /// Blocks until the lock at `path` is held shared.
    pub fn shared(path: &Path) -> Result<StoreLock> {
        Self::take(path, FlockArg::LockShared)
    }

    fn take(path: &Path, how: FlockArg) -> Result<StoreLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ImageError::io(format!("opening lock file {}", path.display()), e))?;
        tracing::trace!(path = %path.display(), ?how, "taking store lock");
        let lock = Flock::lock(file, how).map_err(|(_, e)| {
            ImageError::io(
                format!("locking {}", path.display()),
                std::io::Error::from(e),
            )
        })?;
        Ok(StoreLock { _lock: lock })
    }
}
