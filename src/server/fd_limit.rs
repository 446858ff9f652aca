//! The open-file limit. Every connection holds one file descriptor, and
//! the usual soft limit of 1,024 makes `accept` fail long before the
//! default [`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS).
//! The library never changes it by itself: the binary calls
//! [`raise_file_limit`] at start-up and warns when it is still too low.

/// Descriptors set aside for everything that is not a connection: the
/// listener, the reactor's epoll and notifier, stdio, files being served
/// and the blocking pool's work. Generous: each costs nothing unused.
pub const RESERVED_FDS: u64 = 64;

/// A process's open-file limit (`RLIMIT_NOFILE`); `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The limit in force (the soft limit).
    pub soft: Option<u64>,
    /// How far the soft limit may be raised (the hard limit).
    pub hard: Option<u64>,
}

impl FileLimit {
    /// Whether the limit holds `max_connections` connections plus
    /// [`RESERVED_FDS`]; `max_connections` 0 (no limit) never fits a
    /// finite limit.
    pub fn fits(&self, max_connections: usize) -> bool {
        match (self.soft, max_connections) {
            (None, _) => true,
            (Some(_), 0) => false,
            (Some(soft), n) => soft >= n as u64 + RESERVED_FDS,
        }
    }
}

/// Raises the soft open-file limit to the hard limit and returns the limit
/// now in force; `None` where this build cannot tell (not Linux).
pub fn raise_file_limit() -> Option<FileLimit> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let before = getrlimit(Resource::Nofile);
        if before.current != before.maximum {
            let raised = rustix::process::Rlimit {
                current: before.maximum,
                maximum: before.maximum,
            };
            // Refused (an unlimited hard limit is above the kernel's
            // nr_open, say): keep what we had.
            let _ = setrlimit(Resource::Nofile, raised);
        }
        let now = getrlimit(Resource::Nofile);
        Some(FileLimit {
            soft: now.current,
            hard: now.maximum,
        })
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_counts_the_reserve() {
        let limit = |soft| FileLimit {
            soft: Some(soft),
            hard: None,
        };
        assert!(limit(1_064).fits(1_000));
        assert!(!limit(1_063).fits(1_000));
        assert!(!limit(1 << 20).fits(0));
        let unlimited = FileLimit {
            soft: None,
            hard: None,
        };
        assert!(unlimited.fits(0));
    }
}
