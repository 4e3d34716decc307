//! The `ping` driver: changes nothing on the guest and answers with the contents' `message` value.
//!
//! It exists to show the module machinery end to end: `message=Module.V1` in the contents gives status
//! `OK` and message `Module.V1` in module-query (docs/module-semantics.md §15).

use crate::module::driver::{ApplyContext, DriverError, ModuleDriver, Operation, Outcome};

use super::kv;

/// The `ping` module driver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ping;

impl ModuleDriver for Ping {
    fn module_type(&self) -> &'static str {
        "ping"
    }

    fn description(&self) -> &'static str {
        "Ping Module Driver"
    }

    fn apply(&self, ctx: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
        let data = kv::parse(&std::fs::read(ctx.data_file)?)?;
        Ok(Some(match data.get_ignore_case("message") {
            Some(value) => Outcome::ok(value.to_string()),
            None => Outcome::failed("Message not found in contents file"),
        }))
    }

    fn remove(&self, _ctx: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
        Ok(Some(Outcome::ok("")))
    }

    fn fail_message(&self, op: Operation) -> String {
        match op {
            Operation::Apply => "Could not extract ping message".to_owned(),
            Operation::Remove => "Fail".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(contents: &[u8]) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let data_file = dir.path().join("contents.dat");
        std::fs::write(&data_file, contents).unwrap();
        let ctx = ApplyContext {
            name: "mymod",
            datastore: "all",
            datastore_version: "all",
            data_file: &data_file,
            admin_module: false,
        };
        (&Ping as &dyn ModuleDriver).run_apply(&ctx)
    }

    #[test]
    fn message_is_returned() {
        assert_eq!(apply(b"message=Module.V1\n"), Outcome::ok("Module.V1"));
    }

    #[test]
    fn key_matches_ignoring_case_and_value_keeps_leading_space() {
        assert_eq!(apply(b"# greeting\nMESSAGE = Hi\n"), Outcome::ok(" Hi"));
    }

    #[test]
    fn comment_is_cut_from_value() {
        assert_eq!(apply(b"message=Hello#world"), Outcome::ok("Hello"));
    }

    #[test]
    fn boolean_value_prints_like_python() {
        assert_eq!(apply(b"message=TRUE"), Outcome::ok("True"));
    }

    #[test]
    fn missing_message_is_an_error_outcome() {
        let out = apply(b"other=value\n");
        assert_eq!(out, Outcome::failed("Message not found in contents file"));
        assert_eq!(out.status(), "ERROR");
    }

    #[test]
    fn line_without_equals_cannot_be_parsed() {
        assert_eq!(
            apply(b"message=ok\njunk\n"),
            Outcome::failed("Could not extract ping message: line 2 has no '=' delimiter")
        );
    }

    #[test]
    fn non_utf8_cannot_be_parsed() {
        let out = apply(b"message=\xff");
        assert!(!out.ok);
        assert!(out
            .message
            .starts_with("Could not extract ping message: contents are not valid UTF-8"));
    }

    #[test]
    fn remove_always_succeeds_with_empty_message() {
        let ctx = ApplyContext {
            name: "mymod",
            datastore: "all",
            datastore_version: "all",
            data_file: std::path::Path::new("/nonexistent"),
            admin_module: false,
        };
        assert_eq!((&Ping as &dyn ModuleDriver).run_remove(&ctx), Outcome::ok(""));
    }
}
