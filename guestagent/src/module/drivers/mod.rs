//! The built-in module drivers and the registry that picks the enabled ones.
//!
//! Trove finds drivers through stevedore entry points and keeps those whose type is listed in
//! `module_types`. Here the list of built-in drivers is the `builtin_drivers!` invocation in this file.
//!
//! **Adding a driver** takes one new file in this directory (a type implementing
//! [`ModuleDriver`]) and one line in that invocation, `file_name => constructor,`.
//! Constructors run once at start-up for every built-in driver, listed or not (as stevedore's
//! `invoke_on_load` does), so they must be cheap and free of side effects.

use std::collections::BTreeMap;

use super::driver::ModuleDriver;

pub mod command;
pub mod kv;

/// Declares each driver's file as a public module and lists its constructor.
macro_rules! builtin_drivers {
    ($($file:ident => $constructor:expr),* $(,)?) => {
        $(pub mod $file;)*

        /// Constructors of every built-in driver, in declaration order.
        const BUILTIN: &[fn() -> Box<dyn ModuleDriver>] =
            &[$(|| -> Box<dyn ModuleDriver> { Box::new($constructor) }),*];
    };
}

builtin_drivers! {
    ping => ping::Ping,
    new_relic_license => new_relic_license::NewRelicLicense::default(),
}

/// The drivers this guest can use, by module type.
#[derive(Default)]
pub struct DriverRegistry {
    drivers: BTreeMap<&'static str, Box<dyn ModuleDriver>>,
}

impl DriverRegistry {
    /// An empty registry; see [`load`] for the usual way to build one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `driver`, replacing any driver already registered for its type. For drivers that are not
    /// built in (tests, downstream builds).
    pub fn register(&mut self, driver: Box<dyn ModuleDriver>) {
        self.drivers.insert(driver.module_type(), driver);
    }

    /// The driver for `module_type`, matched exactly as Trove does (types are lower-case).
    pub fn get(&self, module_type: &str) -> Option<&dyn ModuleDriver> {
        self.drivers.get(module_type).map(|d| &**d)
    }

    /// The registered module types, sorted.
    pub fn types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.drivers.keys().copied()
    }
}

impl std::fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.types()).finish()
    }
}

/// Builds the registry of the built-in drivers whose type is in `module_types` (the `module_types`
/// option; entries are trimmed and compared lower-case, as Trove does). Unknown entries are logged and
/// ignored: they may name drivers that only another release has.
pub fn load(module_types: &[String]) -> DriverRegistry {
    let wanted: Vec<String> = module_types
        .iter()
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut registry = DriverRegistry::new();
    for construct in BUILTIN {
        let driver = construct();
        let module_type = driver.module_type();
        if wanted.iter().any(|w| w == module_type) {
            tracing::info!(
                module.r#type = module_type,
                description = driver.description(),
                "loaded module driver"
            );
            registry.register(driver);
        } else {
            tracing::debug!(
                module.r#type = module_type,
                "module driver not in module_types, skipping"
            );
        }
    }
    for w in &wanted {
        if registry.get(w).is_none() {
            tracing::warn!(module.r#type = %w, "no driver implemented for module type");
        }
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &[&str]) -> Vec<&'static str> {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        load(&list).types().collect()
    }

    #[test]
    fn loads_only_listed_types() {
        assert_eq!(types(&["ping"]), ["ping"]);
        assert_eq!(types(&["new_relic_license"]), ["new_relic_license"]);
        assert_eq!(types(&[]), Vec::<&str>::new());
    }

    #[test]
    fn default_module_types_load_both() {
        assert_eq!(
            types(&["ping", "new_relic_license"]),
            ["new_relic_license", "ping"]
        );
    }

    #[test]
    fn entries_are_trimmed_and_lowercased_and_unknown_ignored() {
        assert_eq!(types(&[" PING ", "nosuch", ""]), ["ping"]);
        let registry = load(&["ping".to_owned()]);
        assert!(registry.get("ping").is_some());
        // Lookups by module type stay exact.
        assert!(registry.get("PING").is_none());
        assert!(registry.get("new_relic_license").is_none());
    }

    #[test]
    fn builtin_types_are_lowercase_and_unique() {
        let mut seen = Vec::new();
        for construct in BUILTIN {
            let t = construct().module_type();
            assert_eq!(t, t.to_lowercase(), "driver type must be lower-case");
            assert!(!seen.contains(&t), "duplicate driver type {t}");
            seen.push(t);
        }
        assert_eq!(seen.len(), 2);
    }
}
