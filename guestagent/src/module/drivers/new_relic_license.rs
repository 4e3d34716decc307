//! The `new_relic_license` driver: installs a New Relic server-monitor licence key from the contents'
//! `license_key` value and starts the monitor (docs/module-semantics.md §15).
//!
//! Apply runs `nrsysmond-config --set license_key=<key>` and `/etc/init.d/newrelic-sysmond start`;
//! remove overwrites the key with a dummy and stops the service. Each command runs as root (through
//! `sudo -n` when the guest is not root) with a 10-second limit. On guests without these tools the
//! apply reports `ERROR`, which is expected.
//!
//! The key is a secret: it never appears in logs, in error messages or in the stored result.

use std::time::Duration;

use crate::module::driver::{ApplyContext, DriverError, ModuleDriver, Operation, Outcome};

use super::{command, kv};

/// Trove's limit for each command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The key remove installs in place of the real one: nrsysmond-config wants a 40-character key.
const REMOVED_KEY: &str = "bad_key_that_is_exactly_40_characters_xx";

/// The `new_relic_license` module driver.
#[derive(Clone, Debug)]
pub struct NewRelicLicense {
    /// The argv prefix that sets the key; `--set license_key=<key>` is appended.
    config_cmd: Vec<String>,
    /// The argv prefix that controls the service; `start` or `stop` is appended.
    control_cmd: Vec<String>,
    /// The limit for each command.
    timeout: Duration,
}

impl Default for NewRelicLicense {
    /// The real tools, run as root.
    fn default() -> Self {
        // Trove runs these with `sudo`; `-n` makes a missing sudoers rule fail at once instead of
        // waiting for a password until the timeout. A guest already running as root needs no helper.
        let helper: Vec<String> = if running_as_root() {
            Vec::new()
        } else {
            vec!["sudo".into(), "-n".into()]
        };
        let with_helper = |program: &str| {
            let mut argv = helper.clone();
            argv.push(program.to_owned());
            argv
        };
        Self {
            config_cmd: with_helper("nrsysmond-config"),
            control_cmd: with_helper("/etc/init.d/newrelic-sysmond"),
            timeout: COMMAND_TIMEOUT,
        }
    }
}

impl NewRelicLicense {
    /// A driver that runs the given commands instead of the real tools: `config_cmd` gets
    /// `--set license_key=<key>` appended and `control_cmd` gets `start` or `stop`. For tests and for
    /// images that install the tools elsewhere.
    pub fn with_commands(
        config_cmd: Vec<String>,
        control_cmd: Vec<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            config_cmd,
            control_cmd,
            timeout,
        }
    }

    fn set_license_key(&self, key: &str) -> Result<(), DriverError> {
        let mut argv = self.config_cmd.clone();
        argv.push("--set".into());
        argv.push(format!("license_key={key}"));
        let label = format!("{} --set license_key=***", program_name(&self.config_cmd));
        command::run(&argv, &label, &[key], self.timeout)?;
        Ok(())
    }

    fn control_service(&self, action: &str) -> Result<(), DriverError> {
        let mut argv = self.control_cmd.clone();
        argv.push(action.to_owned());
        let label = format!("{} {action}", program_name(&self.control_cmd));
        command::run(&argv, &label, &[], self.timeout)?;
        Ok(())
    }
}

impl ModuleDriver for NewRelicLicense {
    fn module_type(&self) -> &'static str {
        "new_relic_license"
    }

    fn description(&self) -> &'static str {
        "New Relic License Module Driver"
    }

    fn apply(&self, ctx: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
        let data = kv::parse(&std::fs::read(ctx.data_file)?)?;
        // Trove tests the value's truth, so an empty value or `false` counts as no key.
        let key = match data.get_ignore_case("license_key") {
            Some(value) if value.is_truthy() => value.to_string(),
            _ => {
                return Ok(Some(Outcome::failed(
                    "'license_key' not found in contents file",
                )))
            }
        };
        tracing::info!(module.name = ctx.name, "installing New Relic license key");
        self.set_license_key(&key)?;
        self.control_service("start")?;
        Ok(None)
    }

    fn remove(&self, ctx: &ApplyContext<'_>) -> Result<Option<Outcome>, DriverError> {
        tracing::info!(module.name = ctx.name, "removing New Relic license key");
        self.set_license_key(REMOVED_KEY)?;
        self.control_service("stop")?;
        Ok(None)
    }

    fn success_message(&self, op: Operation) -> String {
        match op {
            Operation::Apply => "New Relic license key installed",
            Operation::Remove => "New Relic license key removed",
        }
        .to_owned()
    }

    fn fail_message(&self, op: Operation) -> String {
        match op {
            Operation::Apply => "New Relic license key not installed",
            Operation::Remove => "New Relic license key not removed",
        }
        .to_owned()
    }
}

/// The name of the program an argv prefix runs, skipping the root helper, for messages.
fn program_name(argv: &[String]) -> &str {
    argv.last().map(String::as_str).unwrap_or_default()
}

/// Whether the effective user is root, read from `/proc/self/status` (the crate forbids the `unsafe`
/// a `geteuid` call would need). Anything unreadable counts as "not root", which only adds `sudo`.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// A fake tool: a shell script that appends its arguments to `calls.log` and exits with `code`.
    /// It runs as `/bin/sh <script>` so the test never executes a file it has just written (which can
    /// fail with "text file busy" while other test threads fork).
    fn fake_tool(dir: &Path, name: &str, code: i32, output: &str) -> Vec<String> {
        let script = dir.join(name);
        let log = dir.join("calls.log");
        std::fs::write(
            &script,
            format!(
                "echo \"{name} $*\" >> '{}'\necho '{output}'\nexit {code}\n",
                log.display()
            ),
        )
        .unwrap();
        vec!["/bin/sh".into(), script.display().to_string()]
    }

    struct Setup {
        dir: tempfile::TempDir,
        data_file: PathBuf,
    }

    impl Setup {
        fn new(contents: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let data_file = dir.path().join("contents.dat");
            std::fs::write(&data_file, contents).unwrap();
            Self { dir, data_file }
        }

        fn ctx(&self) -> ApplyContext<'_> {
            ApplyContext {
                name: "nr",
                datastore: "all",
                datastore_version: "all",
                data_file: &self.data_file,
                admin_module: true,
            }
        }

        fn calls(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
        }
    }

    fn driver(setup: &Setup, config_code: i32, control_code: i32) -> NewRelicLicense {
        NewRelicLicense::with_commands(
            fake_tool(setup.dir.path(), "config", config_code, "bad key abc123"),
            fake_tool(setup.dir.path(), "control", control_code, ""),
            Duration::from_secs(10),
        )
    }

    #[test]
    fn missing_license_key() {
        let setup = Setup::new("message=hello\n");
        let d = driver(&setup, 0, 0);
        let out = (&d as &dyn ModuleDriver).run_apply(&setup.ctx());
        assert_eq!(
            out,
            Outcome::failed("'license_key' not found in contents file")
        );
        assert_eq!(setup.calls(), "", "no command may run without a key");
    }

    #[test]
    fn false_or_empty_key_counts_as_missing() {
        for contents in ["license_key=false", "license_key=", "license_key=#only comment"] {
            let setup = Setup::new(contents);
            let d = driver(&setup, 0, 0);
            let out = (&d as &dyn ModuleDriver).run_apply(&setup.ctx());
            assert_eq!(
                out.message, "'license_key' not found in contents file",
                "{contents}"
            );
        }
    }

    #[test]
    fn installs_key_and_starts_service() {
        let setup = Setup::new("# nr\nLicense_Key=abc123\n");
        let d = driver(&setup, 0, 0);
        let out = (&d as &dyn ModuleDriver).run_apply(&setup.ctx());
        assert_eq!(out, Outcome::ok("New Relic license key installed"));
        assert_eq!(
            setup.calls(),
            "config --set license_key=abc123\ncontrol start\n"
        );
    }

    #[test]
    fn failed_command_reports_error_without_the_key() {
        let setup = Setup::new("license_key=abc123");
        let d = driver(&setup, 1, 0);
        let out = (&d as &dyn ModuleDriver).run_apply(&setup.ctx());
        assert!(!out.ok);
        // The fake tool echoes the key; the message must mask it.
        assert_eq!(out.message, "New Relic license key not installed: bad key ***");
        assert_eq!(setup.calls(), "config --set license_key=abc123\n");
    }

    #[test]
    fn failed_service_start_is_an_error() {
        let setup = Setup::new("license_key=abc123");
        let d = driver(&setup, 0, 2);
        let out = (&d as &dyn ModuleDriver).run_apply(&setup.ctx());
        assert!(!out.ok);
        assert!(
            out.message.starts_with("New Relic license key not installed: "),
            "{}",
            out.message
        );
    }

    #[test]
    fn missing_tools_are_an_error() {
        let setup = Setup::new("license_key=abc123");
        let d = NewRelicLicense::with_commands(
            vec!["/nonexistent/nrsysmond-config".into()],
            vec!["/nonexistent/newrelic-sysmond".into()],
            Duration::from_secs(10),
        );
        let out = (&d as &dyn ModuleDriver).run_apply(&setup.ctx());
        assert!(!out.ok);
        assert!(
            out.message.starts_with(
                "New Relic license key not installed: could not run \
                 /nonexistent/nrsysmond-config --set license_key=***: "
            ),
            "{}",
            out.message
        );
        assert!(!out.message.contains("abc123"));
    }

    #[test]
    fn remove_sets_dummy_key_and_stops_service() {
        let setup = Setup::new("license_key=abc123");
        let d = driver(&setup, 0, 0);
        let out = (&d as &dyn ModuleDriver).run_remove(&setup.ctx());
        assert_eq!(out, Outcome::ok("New Relic license key removed"));
        assert_eq!(
            setup.calls(),
            format!("config --set license_key={REMOVED_KEY}\ncontrol stop\n")
        );
        assert_eq!(REMOVED_KEY.len(), 40);

        let failing = driver(&setup, 0, 5);
        let out = (&failing as &dyn ModuleDriver).run_remove(&setup.ctx());
        assert!(out
            .message
            .starts_with("New Relic license key not removed: "));
    }
}
