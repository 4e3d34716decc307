//! Configuration: oslo.config-style INI files with Trove's option names.
//!
//! Operators of OpenStack services expect `/etc/trove/trove.conf` with a `[DEFAULT]` section, so that is
//! what we read. [`load`] layers, later winning:
//! 1. the defaults written on the structs below (they match Trove's),
//! 2. each `--config-file` in order (or `/etc/trove/trove.conf` when none is given and it exists),
//! 3. environment variables `TROVE__<SECTION>__<OPTION>`, e.g. `TROVE__DATABASE__CONNECTION` or
//!    `TROVE__DEFAULT__BIND_PORT`.
//!
//! Then [`Settings::validate`] checks what the types cannot, so a bad value stops the service at start-up
//! with the option's name in the message. `etc/trove/trove.conf.sample` documents every option.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

/// Where services look when no `--config-file` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/trove/trove.conf";

/// Errors from [`load`]; the message always names the file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(#[from] config::ConfigError),
    #[error("invalid value for option {option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
}

/// Every option the trove-rs processes read. Each process uses its own part.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(rename = "DEFAULT", alias = "default")]
    pub default: DefaultSection,
    pub database: DatabaseSection,
    pub amqp: AmqpSection,
    pub api: ApiSection,
    pub compute: ComputeSection,
    pub guest: GuestSection,
    /// Keystone, as keystonemiddleware's section names it (read by trove-api with `auth_strategy = keystone`).
    pub keystone_authtoken: KeystoneAuthtokenSection,
    /// RabbitMQ's HTTP management API, through which the taskmanager gives each guest a broker user
    /// of its own (`guest_broker_credentials = per_instance`).
    pub rabbitmq_management: RabbitmqManagementSection,
}

/// How guests log in to RabbitMQ (`[DEFAULT] guest_broker_credentials`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestBrokerCredentials {
    /// Each instance gets a RabbitMQ user of its own, created by the taskmanager before its guest
    /// first starts and removed when the instance is deleted, allowed to consume only its own queue
    /// and to publish only to the conductor and to callers' reply queues
    /// ([`crate::amqp::permissions`]).
    #[default]
    PerInstance,
    /// Every guest logs in with the credentials of `transport_url`, as Trove's guests do.
    Shared,
}

impl<'de> Deserialize<'de> for GuestBrokerCredentials {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(de)?;
        match raw.trim() {
            "per_instance" => Ok(Self::PerInstance),
            "shared" => Ok(Self::Shared),
            other => Err(serde::de::Error::custom(format!(
                "must be per_instance or shared, not {other:?}"
            ))),
        }
    }
}

/// `[DEFAULT]`: Trove's own option names and defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct DefaultSection {
    /// This machine's name among the control plane's hosts (oslo's `host`; the machine's hostname by
    /// default). The local compute driver records it on each instance it starts: the guests of a host
    /// are that host's taskmanager's to start and stop.
    pub host: String,
    /// API listen address.
    pub bind_host: String,
    /// API listen port (Trove's 8779).
    pub bind_port: u16,
    /// `rabbit://user:pass@host:port/vhost` (also `amqp://`).
    pub transport_url: String,
    /// The topic exchange every RPC server binds to.
    pub control_exchange: String,
    pub taskmanager_queue: String,
    pub conductor_queue: String,
    /// Encrypt RPC arguments and context with the per-instance keys (docs/messaging.md §3).
    pub enable_secure_rpc_messaging: bool,
    pub taskmanager_rpc_encr_key: SecretString,
    /// Master key that encrypts each instance's RPC key in `instances.encrypted_key`.
    pub inst_rpc_key_encr_key: SecretString,
    pub agent_call_low_timeout: u64,
    pub agent_call_high_timeout: u64,
    /// Seconds between the conductor's sweeps for guests whose heartbeats stopped.
    pub agent_heartbeat_time: u64,
    /// Seconds without a heartbeat after which the conductor marks a running guest SHUTDOWN.
    pub agent_heartbeat_expiry: u64,
    /// Seconds between a guest's heartbeats.
    pub report_interval: f64,
    /// Seconds between the taskmanager's build checks.
    pub usage_sleep_time: f64,
    pub usage_timeout: u64,
    /// Seconds a building instance's guest may report `new` (up, but no `prepare` received) before
    /// the taskmanager sends `prepare` again; at most once per this period. 0: never. Ours.
    pub prepare_resend_after: u64,
    /// Seconds a launched guest may take to send its first report before the build fails. 0: only
    /// `usage_timeout` applies. Ours.
    pub guest_start_timeout: u64,
    pub cluster_usage_timeout: u64,
    pub cluster_delete_time_out: u64,
    pub update_status_on_fail: bool,
    /// Seconds after which an instance in BUILD whose guest is gone (no status report for that long;
    /// or none ever, the instance being that old) may be deleted, which Trove otherwise refuses.
    /// 0: never (Trove's rule). Ours.
    pub build_delete_grace: u64,
    pub region: String,
    /// Datastore used by `POST /instances` without one (the walkthrough needs `redis`).
    #[serde(deserialize_with = "empty_as_none")]
    pub default_datastore: Option<String>,
    /// Allowed module types in the API, and the drivers a guest loads.
    #[serde(deserialize_with = "comma_list")]
    pub module_types: Vec<String>,
    /// Trove's key for module contents (AES-CBC); we only read that format.
    pub module_aes_cbc_key: SecretString,
    /// Our AES-256-GCM key for module contents at rest.
    pub module_contents_key: SecretString,
    /// The key id written in front of new ciphertexts, so keys can rotate.
    pub module_contents_key_id: u8,
    /// Older keys still accepted for reading: `id:key, id:key`.
    #[serde(deserialize_with = "comma_list")]
    pub module_contents_old_keys: Vec<String>,
    pub modules_page_size: i64,
    pub instances_page_size: i64,
    pub clusters_page_size: i64,
    pub module_reapply_max_batch_size: i64,
    pub module_reapply_min_batch_delay: i64,
    /// Seconds a reapply waits for one guest's answer before counting it failed (ours).
    pub module_reapply_instance_timeout: u64,
    /// Publish a reapply's `module_apply` casts persistent (ours). The job rows are the durable
    /// record of a reapply; a transient cast lost with a broker restart is cast again halfway through
    /// `module_reapply_instance_timeout`.
    pub module_reapply_persistent_casts: bool,
    /// How many of a reapply batch's casts await their broker confirms at once (ours).
    pub module_reapply_casts_in_flight: u32,
    pub max_accepted_volume_size: i32,
    /// Default quota of instances per tenant (-1: unlimited), unless the tenant has its own.
    pub max_instances_per_tenant: i32,
    /// Default quota of volume capacity (GB) across a tenant's instances.
    pub max_volumes_per_tenant: i32,
    /// Default quota of backups per tenant (listed; trove-rs has no backups to count).
    pub max_backups_per_tenant: i32,
    /// Default quota of RAM (MB) across a tenant's instances.
    pub max_ram_per_tenant: i32,
    /// `keystone` (Trove's default: tokens are validated against `[keystone_authtoken]`) or `noauth`
    /// (development only: the token names the user and the project).
    pub auth_strategy: String,
    /// Roles that make a caller an admin.
    #[serde(deserialize_with = "comma_list")]
    pub admin_roles: Vec<String>,
    /// Safety switch: `auth_strategy = noauth` is refused unless this is set, so a copied development
    /// config cannot silently open an API to everyone.
    pub allow_noauth: bool,
    /// Whether each guest gets a RabbitMQ user of its own (`per_instance`, the default) or logs in
    /// with `transport_url`'s credentials (`shared`). Ours.
    pub guest_broker_credentials: GuestBrokerCredentials,
}

impl Default for DefaultSection {
    fn default() -> Self {
        Self {
            host: machine_hostname(),
            bind_host: "0.0.0.0".into(),
            bind_port: 8779,
            transport_url: "rabbit://guest:guest@127.0.0.1:5672/".into(),
            control_exchange: "trove".into(),
            taskmanager_queue: "taskmanager".into(),
            conductor_queue: "trove-conductor".into(),
            enable_secure_rpc_messaging: true,
            taskmanager_rpc_encr_key: "bzH6y0SGmjuoY0FNSTptrhgieGXNDX6PIhvz".into(),
            inst_rpc_key_encr_key: "emYjgHFqfXNB1NGehAFIUeoyw4V4XwWHEaKP".into(),
            agent_call_low_timeout: 15,
            agent_call_high_timeout: 180,
            agent_heartbeat_time: 10,
            agent_heartbeat_expiry: 90,
            report_interval: 30.0,
            usage_sleep_time: 5.0,
            usage_timeout: 1800,
            prepare_resend_after: 20,
            guest_start_timeout: 120,
            cluster_usage_timeout: 36000,
            cluster_delete_time_out: 180,
            update_status_on_fail: true,
            build_delete_grace: 300,
            region: "RegionOne".into(),
            default_datastore: None,
            module_types: vec!["ping".into(), "new_relic_license".into()],
            module_aes_cbc_key: "module_aes_cbc_key".into(),
            module_contents_key: "module_contents_key".into(),
            module_contents_key_id: 1,
            module_contents_old_keys: Vec::new(),
            modules_page_size: 20,
            instances_page_size: 20,
            clusters_page_size: 20,
            module_reapply_max_batch_size: 50,
            module_reapply_min_batch_delay: 2,
            module_reapply_instance_timeout: 180,
            module_reapply_persistent_casts: true,
            module_reapply_casts_in_flight: 64,
            max_accepted_volume_size: 10,
            max_instances_per_tenant: 10,
            max_volumes_per_tenant: 40,
            max_backups_per_tenant: 50,
            max_ram_per_tenant: -1,
            auth_strategy: "keystone".into(),
            admin_roles: vec!["admin".into()],
            allow_noauth: false,
            guest_broker_credentials: GuestBrokerCredentials::PerInstance,
        }
    }
}

/// `[database]`, as oslo.db names it.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct DatabaseSection {
    pub connection: SecretString,
    pub max_pool_size: u32,
    /// Seconds to wait for a pooled connection before failing (never stall).
    pub pool_timeout: u64,
    /// Milliseconds after which PostgreSQL cancels a statement.
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            connection: "postgresql://postgres@127.0.0.1:5432/trove".into(),
            max_pool_size: 10,
            pool_timeout: 30,
            statement_timeout_ms: 60_000,
        }
    }
}

/// `[amqp]`: our knobs on top of `transport_url`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AmqpSection {
    /// Put in front of every exchange and queue name; tests use a unique one each.
    pub prefix: String,
    /// Unacknowledged deliveries a consumer may hold.
    pub prefetch: u16,
    /// Seconds to wait for a publisher confirm.
    pub publish_timeout: u64,
    /// Seconds: the first step of the reconnect backoff (oslo's `rabbit_retry_interval`). Each
    /// attempt waits a random time up to the current step ([`crate::backoff::Backoff`]).
    pub reconnect_delay: f64,
    /// Each failed attempt multiplies the step by this (oslo's `rabbit_retry_backoff`).
    pub reconnect_backoff: f64,
    /// Seconds: the step never grows past this (oslo's `rabbit_interval_max`).
    pub reconnect_max_delay: f64,
    /// Seconds: `reconnect_delay` for the guests the taskmanager starts (their `guest.conf`). A host
    /// runs thousands of guests, and every one of them loses its connection in the same instant
    /// when the broker restarts: a wider first step spreads their reconnects over more seconds, so
    /// the host and the broker see a ramp (BENCHMARKS.md). The services keep `reconnect_delay`.
    pub guest_reconnect_delay: f64,
    /// Whether guests' `guestagent.<id>` queues survive a broker restart (oslo's
    /// `amqp_durable_queues`, for guest queues only; the services' queues are always durable). Off:
    /// guests declare their queues again on reconnecting, and a restart recovers in seconds.
    pub durable_guest_queues: bool,
    /// When above zero, server queues expire after this many milliseconds unused (`x-expires`); for
    /// test brokers shared by many short-lived topologies.
    pub queue_expires_ms: u64,
    /// The conductor applies up to this many waiting deliveries together (heartbeats in one
    /// statement, reapply answers in another, anything else one savepoint each).
    pub conductor_batch_size: u16,
    /// Batches the conductor applies at once; its prefetch is this times `conductor_batch_size`.
    pub conductor_batches_in_flight: u16,
    /// While other batches are being applied, a batch waits up to this long (milliseconds) to fill.
    pub conductor_batch_linger_ms: u64,
}

impl Default for AmqpSection {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            prefetch: 32,
            publish_timeout: 30,
            reconnect_delay: 1.0,
            reconnect_backoff: 2.0,
            reconnect_max_delay: 30.0,
            guest_reconnect_delay: 5.0,
            queue_expires_ms: 0,
            durable_guest_queues: false,
            conductor_batch_size: 64,
            conductor_batches_in_flight: 4,
            conductor_batch_linger_ms: 10,
        }
    }
}

/// `[api]`: our additions for the REST service.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ApiSection {
    /// Largest request body accepted, in bytes (module payloads travel base64 in JSON).
    pub max_body_size: usize,
    /// Seconds between outbox relay sweeps when nothing wakes it.
    pub outbox_poll_interval: f64,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            max_body_size: 64 * 1024 * 1024,
            outbox_poll_interval: 1.0,
        }
    }
}

/// `[compute]`: how the taskmanager starts guests.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ComputeSection {
    /// `local`: one real `trove-guestagent` process per instance on this host.
    pub driver: String,
    /// The guest agent binary; empty means "next to the running executable".
    pub guestagent_path: String,
    /// Each guest gets `<state_path>/<instance id>/`.
    pub state_path: PathBuf,
    /// The address every instance's database server listens on, and the one the API shows as its
    /// `ip`. The local driver's instances share this host, so each gets a port of its own.
    pub instance_bind_host: String,
    /// The first port the local driver hands out to an instance's database server.
    pub port_range_start: u16,
    /// The last port the local driver hands out (inclusive). Keep the range below the kernel's
    /// ephemeral ports (`net.ipv4.ip_local_port_range`, 32768 and up by default) and 10,000 below
    /// 65,536: a Redis Cluster member also listens on its port + 10,000 (the cluster bus).
    pub port_range_end: u16,
}

impl Default for ComputeSection {
    fn default() -> Self {
        Self {
            driver: "local".into(),
            guestagent_path: String::new(),
            state_path: PathBuf::from("/var/lib/trove/guests"),
            instance_bind_host: "127.0.0.1".into(),
            port_range_start: 10000,
            port_range_end: 19999,
        }
    }
}

/// `[keystone_authtoken]`: how trove-api validates tokens, with keystonemiddleware's option names.
///
/// The api logs in as this service user (password credentials, project-scoped) and asks Keystone about
/// each caller's token with `GET /v3/auth/tokens`. The service user needs the `service` or `admin` role.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct KeystoneAuthtokenSection {
    /// Keystone's identity endpoint, e.g. `http://127.0.0.1:5000/v3` (a missing `/v3` is added).
    pub auth_url: String,
    /// Only `password` is supported.
    pub auth_type: String,
    pub username: String,
    pub password: SecretString,
    pub project_name: String,
    pub user_domain_name: String,
    pub project_domain_name: String,
    /// Seconds a validated token is trusted without asking Keystone again (never past its expiry).
    /// A revoked token keeps working for at most this long. `cache_seconds` is accepted too.
    #[serde(alias = "cache_seconds")]
    pub token_cache_time: u64,
    /// Most validations kept in memory (ours).
    pub token_cache_size: usize,
    /// Seconds to wait for a connection to Keystone.
    pub http_connect_timeout: f64,
    /// Seconds to wait for Keystone's answer (ours; keystonemiddleware has no such bound).
    pub http_request_timeout: f64,
}

impl Default for KeystoneAuthtokenSection {
    fn default() -> Self {
        Self {
            auth_url: String::new(),
            auth_type: "password".into(),
            username: String::new(),
            password: SecretString::from(String::new()),
            project_name: String::new(),
            user_domain_name: "Default".into(),
            project_domain_name: "Default".into(),
            token_cache_time: 300,
            token_cache_size: 10_000,
            http_connect_timeout: 5.0,
            http_request_timeout: 10.0,
        }
    }
}

impl KeystoneAuthtokenSection {
    /// Checks what trove-api needs to validate tokens; only called with `auth_strategy = keystone`,
    /// because the other services never talk to Keystone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let url = self.auth_url.trim();
        if url.is_empty() {
            return invalid(
                "keystone_authtoken.auth_url",
                "must be set when auth_strategy = keystone",
            );
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return invalid(
                "keystone_authtoken.auth_url",
                "must be an http:// or https:// URL",
            );
        }
        if self.auth_type != "password" {
            return invalid(
                "keystone_authtoken.auth_type",
                "only 'password' is supported",
            );
        }
        for (name, v) in [
            ("keystone_authtoken.username", &self.username),
            ("keystone_authtoken.project_name", &self.project_name),
            (
                "keystone_authtoken.user_domain_name",
                &self.user_domain_name,
            ),
            (
                "keystone_authtoken.project_domain_name",
                &self.project_domain_name,
            ),
        ] {
            if v.trim().is_empty() {
                return invalid(name, "must be set when auth_strategy = keystone");
            }
        }
        if self.password.expose_secret().is_empty() {
            return invalid(
                "keystone_authtoken.password",
                "must be set when auth_strategy = keystone",
            );
        }
        if self.token_cache_size == 0 {
            return invalid(
                "keystone_authtoken.token_cache_size",
                "must be greater than zero",
            );
        }
        for (name, v) in [
            (
                "keystone_authtoken.http_connect_timeout",
                self.http_connect_timeout,
            ),
            (
                "keystone_authtoken.http_request_timeout",
                self.http_request_timeout,
            ),
        ] {
            if v.is_nan() || v <= 0.0 {
                return invalid(name, "must be greater than zero");
            }
        }
        Ok(())
    }
}

/// `[rabbitmq_management]`: the broker's HTTP management API (the `rabbitmq_management` plugin), which
/// the taskmanager calls to create and remove the guests' own users. Read by trove-taskmanager only,
/// and only with `guest_broker_credentials = per_instance`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RabbitmqManagementSection {
    /// The API's base URL (without `/api`). Only `http://`: the services are built without TLS.
    pub url: String,
    /// An `administrator`-tagged RabbitMQ user. Empty: the user of `transport_url`.
    pub username: String,
    /// Its password. Empty (with `username` empty): the password of `transport_url`.
    pub password: SecretString,
    /// Seconds to wait for one answer of the API.
    pub timeout: f64,
}

impl Default for RabbitmqManagementSection {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:15672".into(),
            username: String::new(),
            password: SecretString::from(String::new()),
            timeout: 10.0,
        }
    }
}

/// `[guest]`: one guest agent's identity and its datastore server, written by the compute driver into
/// each guest's `guest.conf`. In the taskmanager's own file, the tuning options here
/// (`health_check_interval`, `server_start_timeout`, `server_restart_delay`) are the values it writes
/// for every guest.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct GuestSection {
    pub guest_id: String,
    pub datastore_manager: String,
    pub instance_rpc_encr_key: Option<SecretString>,
    pub state_dir: PathBuf,
    /// The address the datastore server listens on.
    pub bind_host: String,
    /// The port the datastore server listens on (0: the datastore's standard port, as on a VM).
    pub port: u16,
    /// Where the datastore's server binaries are (the local driver's stand-in for a guest image: the
    /// datastore version's `image_id`). Empty: the host's (`PATH`, then `/usr/sbin` and `/usr/local/sbin`).
    pub datastore_bin_dir: PathBuf,
    /// A directory shared by the guests of one host that caches an initialised data directory per
    /// server version (MySQL), so a new instance copies it instead of initialising its own. Empty: no
    /// cache.
    pub template_dir: PathBuf,
    /// Seconds between two health checks of the datastore server (a query to it).
    pub health_check_interval: f64,
    /// Seconds a starting datastore server gets to answer before `prepare` (or a restart) fails.
    pub server_start_timeout: u64,
    /// Seconds before a server that died is started again (doubling after each failure, up to 30 s).
    pub server_restart_delay: f64,
    /// Redis's `hz` in each instance's `redis.conf`: how often the idle server runs its background
    /// tasks (active key expiry, client timeouts). Redis's own default, 10, costs an idle server
    /// about 0.08 % of a core, which on a host of 2,000 instances is 1.7 cores spent doing nothing;
    /// 1 costs under 0.02 % (BENCHMARKS.md). Keys still expire on access; 1 to 500. Cluster members
    /// keep 10: Redis Cluster's bus (gossip, failure detection) runs on this clock.
    pub redis_hz: u16,
}

impl Default for GuestSection {
    fn default() -> Self {
        Self {
            guest_id: String::new(),
            datastore_manager: String::new(),
            instance_rpc_encr_key: None,
            state_dir: PathBuf::new(),
            bind_host: "127.0.0.1".into(),
            port: 0,
            datastore_bin_dir: PathBuf::new(),
            template_dir: PathBuf::new(),
            health_check_interval: 10.0,
            server_start_timeout: 120,
            server_restart_delay: 1.0,
            redis_hz: 1,
        }
    }
}

impl Settings {
    /// Checks that types alone cannot express. Each error names its option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.default;
        let url = d.transport_url.as_str();
        if !(url.starts_with("rabbit://")
            || url.starts_with("amqp://")
            || url.starts_with("amqps://"))
        {
            return invalid(
                "DEFAULT.transport_url",
                "must start with rabbit://, amqp:// or amqps://",
            );
        }
        if d.control_exchange.trim().is_empty() {
            return invalid("DEFAULT.control_exchange", "must not be empty");
        }
        for (name, v) in [
            ("DEFAULT.modules_page_size", d.modules_page_size),
            ("DEFAULT.instances_page_size", d.instances_page_size),
            ("DEFAULT.clusters_page_size", d.clusters_page_size),
            (
                "DEFAULT.module_reapply_max_batch_size",
                d.module_reapply_max_batch_size,
            ),
            (
                "DEFAULT.module_reapply_casts_in_flight",
                i64::from(d.module_reapply_casts_in_flight),
            ),
        ] {
            if v <= 0 {
                return invalid(name, "must be greater than zero");
            }
        }
        // Trove treats any negative limit as unlimited; -1 is the one spelling its API accepts.
        for (name, v) in [
            (
                "DEFAULT.max_instances_per_tenant",
                d.max_instances_per_tenant,
            ),
            ("DEFAULT.max_volumes_per_tenant", d.max_volumes_per_tenant),
            ("DEFAULT.max_backups_per_tenant", d.max_backups_per_tenant),
            ("DEFAULT.max_ram_per_tenant", d.max_ram_per_tenant),
        ] {
            if v < -1 {
                return invalid(name, "must be -1 (unlimited) or more");
            }
        }
        if d.module_reapply_min_batch_delay < 0 {
            return invalid(
                "DEFAULT.module_reapply_min_batch_delay",
                "must not be negative",
            );
        }
        if d.report_interval.is_nan() || d.report_interval <= 0.0 {
            return invalid("DEFAULT.report_interval", "must be greater than zero");
        }
        if d.usage_sleep_time.is_nan() || d.usage_sleep_time <= 0.0 {
            return invalid("DEFAULT.usage_sleep_time", "must be greater than zero");
        }
        if d.agent_call_high_timeout == 0 || d.agent_call_low_timeout == 0 {
            return invalid(
                "DEFAULT.agent_call_high_timeout",
                "timeouts must be greater than zero",
            );
        }
        if d.agent_heartbeat_time == 0 {
            return invalid("DEFAULT.agent_heartbeat_time", "must be greater than zero");
        }
        if d.agent_heartbeat_expiry == 0 {
            return invalid(
                "DEFAULT.agent_heartbeat_expiry",
                "must be greater than zero",
            );
        }
        if !["noauth", "keystone"].contains(&d.auth_strategy.as_str()) {
            return invalid("DEFAULT.auth_strategy", "must be noauth or keystone");
        }
        // Every service reads this file, so refuse noauth here; the keystone settings are checked by
        // trove-api alone (KeystoneAuthtokenSection::validate), the only process that needs them.
        if d.auth_strategy == "noauth" && !d.allow_noauth {
            return invalid(
                "DEFAULT.allow_noauth",
                "auth_strategy = noauth needs allow_noauth = true (development only: anyone can act as any project)",
            );
        }
        for entry in &d.module_contents_old_keys {
            if parse_key_entry(entry).is_none() {
                return invalid(
                    "DEFAULT.module_contents_old_keys",
                    "entries must look like <id 0-255>:<key>",
                );
            }
        }
        use secrecy::ExposeSecret;
        let conn = self.database.connection.expose_secret();
        if !(conn.starts_with("postgresql://") || conn.starts_with("postgres://")) {
            return invalid("database.connection", "must be a postgresql:// URL");
        }
        if self.database.max_pool_size == 0 {
            return invalid("database.max_pool_size", "must be greater than zero");
        }
        if self.amqp.prefetch == 0 {
            return invalid("amqp.prefetch", "must be greater than zero");
        }
        if self.amqp.conductor_batch_size == 0 || self.amqp.conductor_batch_size > 1000 {
            return invalid("amqp.conductor_batch_size", "must be between 1 and 1000");
        }
        if !(1..=64).contains(&self.amqp.conductor_batches_in_flight) {
            return invalid(
                "amqp.conductor_batches_in_flight",
                "must be between 1 and 64",
            );
        }
        if self.amqp.conductor_batch_linger_ms > 1000 {
            return invalid("amqp.conductor_batch_linger_ms", "must be at most 1000");
        }
        if self.api.max_body_size == 0 {
            return invalid("api.max_body_size", "must be greater than zero");
        }
        if self.compute.driver != "local" {
            return invalid("compute.driver", "the only driver is 'local'");
        }
        let c = &self.compute;
        if c.port_range_start == 0 || c.port_range_start > c.port_range_end {
            return invalid(
                "compute.port_range_start",
                "must be above 0 and not above compute.port_range_end",
            );
        }
        if u32::from(c.port_range_end) + 10000 > 65535 {
            return invalid(
                "compute.port_range_end",
                "must leave room for the Redis Cluster bus port (port + 10000 <= 65535)",
            );
        }
        if d.host.trim().is_empty() {
            return invalid("DEFAULT.host", "must not be empty");
        }
        let g = &self.guest;
        if g.health_check_interval.is_nan() || g.health_check_interval <= 0.0 {
            return invalid("guest.health_check_interval", "must be greater than zero");
        }
        if g.server_restart_delay.is_nan() || g.server_restart_delay < 0.0 {
            return invalid("guest.server_restart_delay", "must not be negative");
        }
        if g.server_start_timeout == 0 {
            return invalid("guest.server_start_timeout", "must be greater than zero");
        }
        if !(1..=500).contains(&g.redis_hz) {
            return invalid("guest.redis_hz", "must be between 1 and 500");
        }
        if d.guest_broker_credentials == GuestBrokerCredentials::PerInstance {
            let m = &self.rabbitmq_management;
            if !m.url.trim().starts_with("http://") {
                return invalid(
                    "rabbitmq_management.url",
                    "must be an http:// URL (needed by guest_broker_credentials = per_instance)",
                );
            }
            if m.timeout.is_nan() || m.timeout <= 0.0 {
                return invalid("rabbitmq_management.timeout", "must be greater than zero");
            }
        }
        Ok(())
    }

    /// The RPC call timeout for slow guest operations (module_apply, module_list, ...).
    pub fn high_timeout(&self) -> Duration {
        Duration::from_secs(self.default.agent_call_high_timeout)
    }

    /// The RPC call timeout for quick guest operations.
    pub fn low_timeout(&self) -> Duration {
        Duration::from_secs(self.default.agent_call_low_timeout)
    }
}

/// The kernel's hostname, or `localhost` when it cannot be read.
fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Parses one `id:key` entry of `module_contents_old_keys`.
pub fn parse_key_entry(entry: &str) -> Option<(u8, &str)> {
    let (id, key) = entry.split_once(':')?;
    let id = id.trim().parse().ok()?;
    (!key.is_empty()).then_some((id, key))
}

fn invalid(option: &'static str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        option,
        reason: reason.to_owned(),
    })
}

/// Loads the settings from `files` (or the default file when it exists), then the environment.
pub fn load(files: &[PathBuf]) -> Result<Settings, ConfigError> {
    let mut builder = config::Config::builder();
    let default_file = Path::new(DEFAULT_CONFIG_FILE);
    if files.is_empty() {
        if default_file.exists() {
            builder = builder.add_source(ini_file(default_file));
        }
    } else {
        for f in files {
            if !f.exists() {
                return Err(ConfigError::Missing(f.clone()));
            }
            builder = builder.add_source(ini_file(f));
        }
    }
    builder = builder.add_source(
        config::Environment::with_prefix("TROVE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(false),
    );
    let settings: Settings = builder.build()?.try_deserialize()?;
    settings.validate()?;
    Ok(settings)
}

/// One INI file as it is: no defaults file, no environment, not validated. For reading back a file
/// this process wrote itself (a guest's `guest.conf`).
pub fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Missing(path.to_owned()));
    }
    Ok(config::Config::builder()
        .add_source(ini_file(path))
        .build()?
        .try_deserialize()?)
}

fn ini_file(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path)
        .format(config::FileFormat::Ini)
        .required(true)
}

/// oslo's ListOpt: `a, b, c` in one string (or a real list).
fn comma_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(de)? {
        Raw::One(s) => s.split(',').map(str::to_owned).collect(),
        Raw::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

fn empty_as_none<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    let v = Option::<String>::deserialize(de)?;
    Ok(v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_trove_defaults() {
        let s = Settings::default();
        assert_eq!(s.default.bind_port, 8779);
        assert_eq!(s.default.module_types, ["ping", "new_relic_license"]);
        assert_eq!(s.default.module_reapply_max_batch_size, 50);
        assert_eq!(s.default.agent_call_high_timeout, 180);
        s.validate().unwrap();
    }

    #[test]
    fn quota_defaults_are_troves_and_read_from_default() {
        let d = Settings::default().default;
        assert_eq!(
            (
                d.max_instances_per_tenant,
                d.max_volumes_per_tenant,
                d.max_backups_per_tenant,
                d.max_ram_per_tenant
            ),
            (10, 40, 50, -1)
        );
        let f = write("[DEFAULT]\nmax_instances_per_tenant = 3\nmax_ram_per_tenant = 4096\n");
        let s = load(&[f.path().into()]).unwrap();
        assert_eq!(s.default.max_instances_per_tenant, 3);
        assert_eq!(s.default.max_ram_per_tenant, 4096);
        let f = write("[DEFAULT]\nmax_volumes_per_tenant = -2\n");
        let err = load(&[f.path().into()]).unwrap_err().to_string();
        assert!(err.contains("DEFAULT.max_volumes_per_tenant"), "{err}");
    }

    #[test]
    fn ini_files_layer_and_later_wins() {
        let a = write("[DEFAULT]\nbind_port = 9000\ndefault_datastore = redis\nmodule_types = ping\n[database]\nconnection = postgresql://x@h/db\n");
        let b = write("[DEFAULT]\nbind_port = 9001\n");
        let s = load(&[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(s.default.bind_port, 9001);
        assert_eq!(s.default.default_datastore.as_deref(), Some("redis"));
        assert_eq!(s.default.module_types, ["ping"]);
        assert_eq!(s.database.connection.expose_secret(), "postgresql://x@h/db");
        assert_eq!(s.default.control_exchange, "trove");
    }

    #[test]
    fn bad_value_names_the_option() {
        let a = write("[DEFAULT]\nbind_port = eighty\n");
        let err = load(&[a.path().into()]).unwrap_err().to_string();
        assert!(err.contains("bind_port"), "{err}");
        let b = write("[DEFAULT]\ntransport_url = http://nope\n");
        let err = load(&[b.path().into()]).unwrap_err().to_string();
        assert!(err.contains("DEFAULT.transport_url"), "{err}");
        let c = write("[DEFAULT]\nmodule_reapply_casts_in_flight = 0\n");
        let err = load(&[c.path().into()]).unwrap_err().to_string();
        assert!(
            err.contains("DEFAULT.module_reapply_casts_in_flight"),
            "{err}"
        );
        for (bad, name) in [
            (
                "conductor_batches_in_flight = 0",
                "amqp.conductor_batches_in_flight",
            ),
            (
                "conductor_batch_linger_ms = 5000",
                "amqp.conductor_batch_linger_ms",
            ),
        ] {
            let f = write(&format!("[amqp]\n{bad}\n"));
            let err = load(&[f.path().into()]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn noauth_needs_the_switch_and_keystone_needs_credentials() {
        let a = write("[DEFAULT]\nauth_strategy = noauth\n");
        let err = load(&[a.path().into()]).unwrap_err().to_string();
        assert!(err.contains("DEFAULT.allow_noauth"), "{err}");
        let b = write("[DEFAULT]\nauth_strategy = noauth\nallow_noauth = true\n");
        load(&[b.path().into()]).unwrap();

        let s = Settings::default();
        assert_eq!(s.default.auth_strategy, "keystone");
        let err = s.keystone_authtoken.validate().unwrap_err().to_string();
        assert!(err.contains("keystone_authtoken.auth_url"), "{err}");
        let c = write("[keystone_authtoken]\nauth_url = http://127.0.0.1:5000/v3\nusername = trove\npassword = pw\nproject_name = service\ncache_seconds = 7\n");
        let s = load(&[c.path().into()]).unwrap();
        let k = &s.keystone_authtoken;
        assert_eq!(k.token_cache_time, 7);
        assert_eq!(k.user_domain_name, "Default");
        assert_eq!(k.password.expose_secret(), "pw");
        k.validate().unwrap();
    }

    #[test]
    fn guest_broker_credentials_and_the_management_api() {
        let s = Settings::default();
        assert_eq!(
            s.default.guest_broker_credentials,
            GuestBrokerCredentials::PerInstance
        );
        assert_eq!(s.rabbitmq_management.url, "http://127.0.0.1:15672");
        let a = write(
            "[DEFAULT]\nguest_broker_credentials = shared\n[rabbitmq_management]\nurl = nope\n",
        );
        let s = load(&[a.path().into()]).unwrap();
        assert_eq!(
            s.default.guest_broker_credentials,
            GuestBrokerCredentials::Shared
        );
        let b = write(
            "[rabbitmq_management]\nurl = https://broker:15671\nusername = admin\npassword = pw\n",
        );
        let err = load(&[b.path().into()]).unwrap_err().to_string();
        assert!(err.contains("rabbitmq_management.url"), "{err}");
        let c = write("[DEFAULT]\nguest_broker_credentials = each\n");
        let err = load(&[c.path().into()]).unwrap_err().to_string();
        assert!(err.contains("per_instance"), "{err}");
        let d = write(
            "[rabbitmq_management]\nurl = http://10.0.0.1:15672\nusername = admin\npassword = pw\n",
        );
        let s = read_file(d.path()).unwrap();
        assert_eq!(s.rabbitmq_management.username, "admin");
        assert_eq!(s.rabbitmq_management.password.expose_secret(), "pw");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load(&[PathBuf::from("/nonexistent/trove.conf")]).unwrap_err();
        assert!(matches!(err, ConfigError::Missing(_)));
    }
}
