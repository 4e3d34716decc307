//! [`ApplyError`]: why a `module_apply`, `module_remove` or `module_list` call failed as a whole.
//!
//! A driver failing is *not* one of these: that is recorded as status `ERROR` in the module's result.
//! These are the checks Trove's guest raises on (docs/module-semantics.md §14), with Trove's messages, plus
//! local I/O failures. The RPC layer sends the message and [`ApplyError::class_name`] in the failure
//! reply; the API turns `NotFound` into a 404 and the rest into a 400 `GuestError`.

use std::path::PathBuf;

/// Why a module call failed. `Display` is the message sent back to the caller, Trove's text where
/// Trove has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The payload has an empty `name`.
    #[error("Module name not specified")]
    NameMissing,
    /// The payload has no `contents`, or empty ones.
    #[error("Module contents not specified")]
    ContentsMissing,
    /// No loaded driver handles the module's type (it is not built in, or not in `module_types`).
    #[error("No driver implemented for module type '{module_type}'")]
    NoDriver {
        /// The payload's `type`.
        module_type: String,
    },
    /// The module is bound to a datastore other than this guest's.
    #[error("The module is invalid: Module not valid for datastore {manager}")]
    WrongDatastore {
        /// This guest's datastore manager (Trove names the guest's, not the module's).
        manager: String,
    },
    /// `module_remove` for a module this guest has no result for.
    #[error("Module '{name}' has not been applied")]
    NotApplied {
        /// The module's name.
        name: String,
    },
    /// The module id cannot be used as a directory name. Trove does not check; we do so that a bad
    /// payload cannot write outside the modules directory.
    #[error("Module id '{id}' is not valid")]
    InvalidId {
        /// The payload's `id`.
        id: String,
    },
    /// `contents` is not base64.
    #[error("Module contents for '{name}' are not valid base64: {source}")]
    InvalidContents {
        /// The module's name.
        name: String,
        /// The decoder's complaint (a position, never the data).
        source: base64::DecodeError,
    },
    /// Reading or writing a file under the modules directory failed.
    #[error("{source}: '{}'", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A `result.json` is not a result record.
    #[error("Could not read module result {}: {source}", path.display())]
    CorruptResult {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl ApplyError {
    /// The exception class a Trove guest would raise, for the `class` of an RPC failure reply.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::NameMissing | Self::ContentsMissing => "AttributeError",
            Self::NoDriver { .. } => "ModuleTypeNotFound",
            Self::WrongDatastore { .. } | Self::InvalidId { .. } => "ModuleInvalid",
            Self::NotApplied { .. } => "NotFound",
            Self::InvalidContents { .. } => "Error",
            Self::Io { .. } => "OSError",
            Self::CorruptResult { .. } => "ValueError",
        }
    }

    /// The Python module of [`class_name`](Self::class_name), for the `module` of an RPC failure reply.
    pub fn class_module(&self) -> &'static str {
        match self {
            Self::NoDriver { .. }
            | Self::WrongDatastore { .. }
            | Self::InvalidId { .. }
            | Self::NotApplied { .. } => "trove.common.exception",
            Self::InvalidContents { .. } => "binascii",
            Self::NameMissing
            | Self::ContentsMissing
            | Self::Io { .. }
            | Self::CorruptResult { .. } => "builtins",
        }
    }

    /// Whether this is Trove's `NotFound` (the module was never applied here).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotApplied { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_troves() {
        assert_eq!(
            ApplyError::NameMissing.to_string(),
            "Module name not specified"
        );
        assert_eq!(
            ApplyError::ContentsMissing.to_string(),
            "Module contents not specified"
        );
        assert_eq!(
            ApplyError::NoDriver {
                module_type: "x".into()
            }
            .to_string(),
            "No driver implemented for module type 'x'"
        );
        assert_eq!(
            ApplyError::WrongDatastore {
                manager: "redis".into()
            }
            .to_string(),
            "The module is invalid: Module not valid for datastore redis"
        );
        let not_applied = ApplyError::NotApplied {
            name: "mymod".into(),
        };
        assert_eq!(
            not_applied.to_string(),
            "Module 'mymod' has not been applied"
        );
        assert_eq!(not_applied.class_name(), "NotFound");
        assert_eq!(not_applied.class_module(), "trove.common.exception");
        assert!(not_applied.is_not_found());
        assert!(!ApplyError::NameMissing.is_not_found());
    }
}
