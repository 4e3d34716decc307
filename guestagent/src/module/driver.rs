//! The contract between the module manager and a module driver (docs/module-semantics.md §15).
//!
//! A driver implements [`ModuleDriver::apply`] and [`ModuleDriver::remove`]. The manager never calls
//! them directly: it goes through `run_apply` and `run_remove` (inherent methods of
//! `dyn ModuleDriver`), which play the part of Trove's `output` decorator:
//!
//! | driver returns          | outcome                                   |
//! |-------------------------|-------------------------------------------|
//! | `Ok(None)`              | `(true, success_message)`                 |
//! | `Ok(Some(outcome))`     | the driver's own `(ok, message)`          |
//! | `Err(e)`                | `(false, "<fail_message>: <e>")`          |
//!
//! The wrappers are inherent methods on `dyn ModuleDriver` so that no driver can override them.

use std::path::Path;

use super::drivers::command::CommandError;
use super::drivers::kv::KvError;

/// What the manager tells a driver about the module it is applying or removing.
#[derive(Clone, Copy, Debug)]
pub struct ApplyContext<'a> {
    /// The module's name.
    pub name: &'a str,
    /// The module's datastore name, or `all`.
    pub datastore: &'a str,
    /// The module's datastore version name, or `all`.
    pub datastore_version: &'a str,
    /// `modules/<type>/<id>/contents.dat`: the decoded contents. Drivers read it rather than getting the
    /// bytes so that large contents need not sit in memory, as in Trove.
    pub data_file: &'a Path,
    /// The module was created with admin-only options. A driver may refuse to apply a module that was
    /// not, as a form of access control.
    pub admin_module: bool,
}

/// Which driver operation a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Applying the module.
    Apply,
    /// Removing the module.
    Remove,
}

/// The `(ok, message)` pair a driver operation ends with; `ok` becomes the status `OK` or `ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// The message stored in `result.json` and shown by module-query. Drivers must keep secrets out.
    pub message: String,
}

impl Outcome {
    /// A successful outcome with `message`.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
        }
    }

    /// A failed outcome with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
        }
    }

    /// `OK` or `ERROR`, the status Trove stores.
    pub fn status(&self) -> &'static str {
        if self.ok {
            "OK"
        } else {
            "ERROR"
        }
    }
}

/// An error a driver operation raised. Its `Display` follows `<fail_message>: ` in the stored message,
/// so it must not contain module contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The contents could not be parsed.
    #[error(transparent)]
    Parse(#[from] KvError),
    /// An external command failed, timed out or could not start.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Reading the contents file or another local file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Other(String),
}

/// A module driver: one module type's way to apply and remove module contents on this guest.
///
/// Drivers are built once at start-up by the registry (`drivers::load`) and shared by every request,
/// hence `Send + Sync` and `&self`. Operations run on a blocking thread and may block (run commands,
/// read files), so the RPC layer must call the manager from `spawn_blocking`.
pub trait ModuleDriver: Send + Sync {
    /// The module type this driver handles, lower-case (the `module_types` entry and the `type` field).
    fn module_type(&self) -> &'static str;

    /// A one-line description, logged when the driver loads.
    fn description(&self) -> &'static str;

    /// Applies the module whose contents are in `ctx.data_file`. See the module docs for how the
    /// return value becomes the stored status and message.
    fn apply(&self, ctx: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError>;

    /// Undoes [`apply`](Self::apply). The manager marks the module removed whatever this returns.
    fn remove(&self, ctx: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError>;

    /// The message for an operation that returned `Ok(None)`. Trove's default is `Success`.
    fn success_message(&self, op: Operation) -> String {
        let _ = op;
        "Success".to_owned()
    }

    /// The prefix for an operation that returned `Err`. Trove's default is `Fail`.
    fn fail_message(&self, op: Operation) -> String {
        let _ = op;
        "Fail".to_owned()
    }
}

impl dyn ModuleDriver + '_ {
    /// Runs [`ModuleDriver::apply`] and turns its result into an [`Outcome`], as Trove's `output`
    /// decorator does.
    pub fn run_apply(&self, ctx: &ApplyContext<'_>) -> Outcome {
        self.wrap(Operation::Apply, self.apply(ctx))
    }

    /// Runs [`ModuleDriver::remove`] and turns its result into an [`Outcome`].
    pub fn run_remove(&self, ctx: &ApplyContext<'_>) -> Outcome {
        self.wrap(Operation::Remove, self.remove(ctx))
    }

    fn wrap(&self, op: Operation, result: Result<Option<Outcome>, DriverError>) -> Outcome {
        match result {
            Ok(Some(outcome)) => outcome,
            Ok(None) => Outcome::ok(self.success_message(op)),
            Err(err) => {
                // The error text is safe to log: DriverError never carries contents.
                tracing::warn!(
                    module.r#type = self.module_type(),
                    operation = ?op,
                    error = %err,
                    "module driver failed"
                );
                Outcome::failed(format!("{}: {err}", self.fail_message(op)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver whose answers are fixed, to check the wrapper alone.
    struct Fixed {
        apply: fn() -> Result<Option<Outcome>, DriverError>,
    }

    impl ModuleDriver for Fixed {
        fn module_type(&self) -> &'static str {
            "fixed"
        }
        fn description(&self) -> &'static str {
            "fixed answers"
        }
        fn apply(&self, _: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
            (self.apply)()
        }
        fn remove(&self, _: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
            Err(DriverError::Other("boom".into()))
        }
        fn success_message(&self, op: Operation) -> String {
            format!("done {op:?}")
        }
        fn fail_message(&self, op: Operation) -> String {
            format!("broke {op:?}")
        }
    }

    fn ctx() -> ApplyContext<'static> {
        ApplyContext {
            name: "m",
            datastore: "all",
            datastore_version: "all",
            data_file: Path::new("/nonexistent/contents.dat"),
            admin_module: false,
        }
    }

    struct Defaults;
    impl ModuleDriver for Defaults {
        fn module_type(&self) -> &'static str {
            "defaults"
        }
        fn description(&self) -> &'static str {
            "default messages"
        }
        fn apply(&self, _: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
            Ok(None)
        }
        fn remove(&self, _: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
            Err(DriverError::Other("nope".into()))
        }
    }

    #[test]
    fn default_messages_are_success_and_fail() {
        let d: &dyn ModuleDriver = &Defaults;
        assert_eq!(d.run_apply(&ctx()), Outcome::ok("Success"));
        assert_eq!(d.run_remove(&ctx()), Outcome::failed("Fail: nope"));
    }

    #[test]
    fn none_becomes_success_message() {
        let d: &dyn ModuleDriver = &Fixed { apply: || Ok(None) };
        let out = d.run_apply(&ctx());
        assert_eq!(out, Outcome::ok("done Apply"));
        assert_eq!(out.status(), "OK");
    }

    #[test]
    fn own_outcome_is_kept() {
        let d: &dyn ModuleDriver = &Fixed {
            apply: || Ok(Some(Outcome::failed("mine"))),
        };
        let out = d.run_apply(&ctx());
        assert_eq!(out, Outcome::failed("mine"));
        assert_eq!(out.status(), "ERROR");
    }

    #[test]
    fn error_is_prefixed_with_fail_message() {
        let d: &dyn ModuleDriver = &Fixed {
            apply: || Err(KvError::MissingDelimiter { line: 2 }.into()),
        };
        assert_eq!(
            d.run_apply(&ctx()),
            Outcome::failed("broke Apply: line 2 has no '=' delimiter")
        );
        assert_eq!(d.run_remove(&ctx()), Outcome::failed("broke Remove: boom"));
    }
}
