//! Process hardening for a process that holds private keys: no core dumps,
//! no ptrace attach by same-user processes, and key memory locked out of
//! swap. Uses `nix` so that this crate itself stays free of `unsafe`.

use nix::sys::{
    mman::{MlockAllFlags, mlockall},
    prctl,
    resource::{Resource, setrlimit},
};

/// Why hardening failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HardenError {
    /// Core dumps or ptrace could not be disabled.
    #[error("cannot disable core dumps and ptrace attach: {0}")]
    Dumpable(nix::Error),
    /// Memory could not be locked and that was not allowed.
    #[error(
        "cannot lock memory (mlockall: {0}); keys could be written to swap. Raise the \
         memlock limit (systemd: LimitMEMLOCK=infinity; or grant CAP_IPC_LOCK), or pass \
         --allow-unlocked-memory (seal.allow_unlocked_memory) where swap is encrypted or off"
    )]
    Mlock(nix::Error),
}

/// What hardening achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardened {
    /// Whether all memory is locked.
    pub memory_locked: bool,
}

/// Disables core dumps and ptrace attach (`PR_SET_DUMPABLE` 0,
/// `RLIMIT_CORE` 0) and locks current and future memory. If locking fails,
/// returns an error unless `allow_unlocked`, in which case it warns.
pub fn harden_process(allow_unlocked: bool) -> Result<Hardened, HardenError> {
    prctl::set_dumpable(false).map_err(HardenError::Dumpable)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(HardenError::Dumpable)?;
    // MCL_ONFAULT (Linux 4.4+, value 4; nix 0.32 has no name for it) locks
    // pages as they are first touched instead of faulting in every mapping
    // at once: without it, reserved allocator arenas and thread stacks
    // become a gigabyte of resident, locked memory.
    let on_fault = MlockAllFlags::from_bits_retain(4);
    match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE | on_fault) {
        Ok(()) => Ok(Hardened {
            memory_locked: true,
        }),
        Err(e) if allow_unlocked => {
            tracing::warn!(error = %e, "key memory is NOT locked: keys may reach swap");
            Ok(Hardened {
                memory_locked: false,
            })
        }
        Err(e) => Err(HardenError::Mlock(e)),
    }
}

/// Whether this process is dumpable (core dumps, ptrace by the same user).
pub fn is_dumpable() -> bool {
    prctl::get_dumpable().unwrap_or(true)
}
