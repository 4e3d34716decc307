-- Trove's tables for the module feature (docs/schema.md), plus what our messaging needs:
-- the api's outbox, durable reapply jobs and the guests' reported module results.

CREATE TABLE datastores (
  id                 varchar(36) PRIMARY KEY,
  name               varchar(255) NOT NULL UNIQUE,
  default_version_id varchar(36) NULL
);

CREATE TABLE datastore_versions (
  id           varchar(36) PRIMARY KEY,
  datastore_id varchar(36) NOT NULL REFERENCES datastores(id),
  name         varchar(255) NOT NULL,
  version      varchar(255) NULL,
  manager      varchar(255) NOT NULL,
  image_id     varchar(255) NULL,
  image_tags   varchar(255) NULL,
  packages     varchar(511) NULL,
  active       boolean NOT NULL DEFAULT true,
  CONSTRAINT ds_versions UNIQUE (datastore_id, name, version)
);

CREATE TABLE flavors (
  id         varchar(255) PRIMARY KEY,
  name       varchar(255) NOT NULL UNIQUE,
  ram        integer NOT NULL,
  vcpus      integer NOT NULL DEFAULT 1,
  disk       integer NOT NULL DEFAULT 0,
  ephemeral  integer NOT NULL DEFAULT 0,
  deleted    boolean NOT NULL DEFAULT false
);

CREATE TABLE clusters (
  id                   varchar(36) PRIMARY KEY,
  created              timestamp NOT NULL,
  updated              timestamp NOT NULL,
  name                 varchar(255) NOT NULL,
  task_id              integer NOT NULL,
  tenant_id            varchar(64) NOT NULL,
  datastore_version_id varchar(36) NOT NULL REFERENCES datastore_versions(id),
  configuration_id     varchar(36) NULL,
  deleted              boolean NOT NULL DEFAULT false,
  deleted_at           timestamp NULL
);
CREATE INDEX clusters_tenant_live ON clusters (tenant_id, id) WHERE NOT deleted;

CREATE TABLE instances (
  id                   varchar(36) PRIMARY KEY,
  created              timestamp NOT NULL,
  updated              timestamp NOT NULL,
  name                 varchar(255) NOT NULL,
  hostname             varchar(255) NULL,
  compute_instance_id  varchar(64) NULL,
  server_status        varchar(64) NULL,
  task_id              integer NOT NULL,
  task_description     varchar(255) NOT NULL,
  task_start_time      timestamp NULL,
  volume_id            varchar(36) NULL,
  volume_size          integer NULL,
  flavor_id            varchar(255) NOT NULL,
  tenant_id            varchar(64) NOT NULL,
  datastore_version_id varchar(36) NOT NULL REFERENCES datastore_versions(id),
  cluster_id           varchar(36) NULL REFERENCES clusters(id),
  shard_id             varchar(36) NULL,
  type                 varchar(64) NULL,
  region_id            varchar(255) NOT NULL,
  encrypted_key        varchar(255) NULL,
  configuration_id     varchar(36) NULL,
  slave_of_id          varchar(36) NULL,
  deleted              boolean NOT NULL DEFAULT false,
  deleted_at           timestamp NULL
);
CREATE INDEX instances_tenant_live ON instances (tenant_id, id) WHERE NOT deleted;
CREATE INDEX instances_cluster     ON instances (cluster_id) WHERE cluster_id IS NOT NULL;
CREATE INDEX instances_building    ON instances (task_id) WHERE NOT deleted AND task_id <> 1;

CREATE TABLE service_statuses (
  id                 varchar(36) PRIMARY KEY,
  instance_id        varchar(36) NOT NULL UNIQUE REFERENCES instances(id) ON DELETE CASCADE,
  status_id          integer NOT NULL,
  status_description varchar(64) NOT NULL,
  updated_at         timestamp NULL
);

CREATE TABLE instance_faults (
  id          varchar(64) PRIMARY KEY,
  instance_id varchar(36) NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
  message     varchar(255) NOT NULL,
  details     text NOT NULL,
  created     timestamp NOT NULL,
  updated     timestamp NOT NULL,
  deleted     boolean NOT NULL DEFAULT false,
  deleted_at  timestamp NULL
);

CREATE TABLE modules (
  id                   varchar(64) PRIMARY KEY,
  name                 varchar(255) NOT NULL,
  type                 varchar(255) NOT NULL,
  contents             text NOT NULL,
  description          varchar(255) NULL,
  tenant_id            varchar(64) NULL,
  datastore_id         varchar(64) NULL REFERENCES datastores(id),
  datastore_version_id varchar(64) NULL REFERENCES datastore_versions(id),
  auto_apply           boolean NOT NULL DEFAULT false,
  visible              boolean NOT NULL DEFAULT true,
  live_update          boolean NOT NULL DEFAULT false,
  priority_apply       boolean NOT NULL DEFAULT false,
  apply_order          smallint NOT NULL DEFAULT 5 CHECK (apply_order BETWEEN 0 AND 9),
  is_admin             boolean NOT NULL DEFAULT false,
  md5                  char(32) NOT NULL,
  created              timestamp NOT NULL,
  updated              timestamp NOT NULL,
  deleted              boolean NOT NULL DEFAULT false,
  deleted_at           timestamp NULL
);
-- The uniqueness key of docs/module-semantics.md §3, with NULLs comparing equal.
CREATE UNIQUE INDEX modules_live_key ON modules
  (name, lower(type), COALESCE(tenant_id, ''), COALESCE(datastore_id, ''), COALESCE(datastore_version_id, ''))
  WHERE NOT deleted;
CREATE INDEX modules_tenant_live ON modules (tenant_id) WHERE NOT deleted;
CREATE INDEX modules_auto_apply  ON modules (datastore_id, datastore_version_id) WHERE auto_apply AND NOT deleted;

CREATE TABLE instance_modules (
  id          varchar(64) PRIMARY KEY,
  instance_id varchar(36) NOT NULL REFERENCES instances(id) ON DELETE CASCADE ON UPDATE CASCADE,
  module_id   varchar(64) NOT NULL REFERENCES modules(id)   ON DELETE CASCADE ON UPDATE CASCADE,
  md5         char(32) NOT NULL,
  created     timestamp NOT NULL,
  updated     timestamp NOT NULL,
  deleted     boolean NOT NULL DEFAULT false,
  deleted_at  timestamp NULL
);
-- At most one live row per (instance, module): the dedupe rule of docs/module-semantics.md §11.
CREATE UNIQUE INDEX instance_modules_live_pair ON instance_modules (instance_id, module_id) WHERE NOT deleted;
-- Covers the count-only query (group by md5, min/max updated) without touching the heap.
CREATE INDEX instance_modules_module_md5 ON instance_modules (module_id, md5) INCLUDE (updated, instance_id)
  WHERE NOT deleted;

CREATE TABLE conductor_lastseen (
  instance_id varchar(36) NOT NULL,
  method_name varchar(36) NOT NULL,
  sent        double precision NOT NULL,
  PRIMARY KEY (instance_id, method_name)
);

-- What guests report about each module (the conductor's module_results); observability only,
-- never instance_modules.
CREATE TABLE guest_module_results (
  instance_id   varchar(36) NOT NULL,
  module_id     varchar(64) NOT NULL,
  md5           char(32) NOT NULL,
  status        varchar(16) NOT NULL,
  message       text NULL,
  guest_created varchar(32) NULL,
  guest_updated varchar(32) NULL,
  reported_at   timestamp NOT NULL,
  PRIMARY KEY (instance_id, module_id)
);

-- The api's transactional outbox: a row per message, written in the same transaction as the change it
-- announces, published with confirms and deleted by the relay.
CREATE TABLE outbox (
  id         bigserial PRIMARY KEY,
  topic      varchar(255) NOT NULL,
  method     varchar(64) NOT NULL,
  body       bytea NOT NULL,
  request_id varchar(64) NOT NULL,
  created    timestamp NOT NULL
);

-- A fleet-wide reapply (docs/module-semantics.md §12), durable so a restarted taskmanager resumes it.
CREATE TABLE reapply_jobs (
  id                varchar(36) PRIMARY KEY,
  module_id         varchar(64) NOT NULL REFERENCES modules(id) ON DELETE CASCADE,
  tenant_id         varchar(64) NOT NULL,
  is_admin          boolean NOT NULL,
  md5               char(32) NULL,
  include_clustered boolean NOT NULL,
  force             boolean NOT NULL,
  batch_size        integer NOT NULL,
  batch_delay       integer NOT NULL,
  state             varchar(16) NOT NULL,
  current_md5       char(32) NULL,
  total             integer NOT NULL DEFAULT 0,
  applied           integer NOT NULL DEFAULT 0,
  skipped           integer NOT NULL DEFAULT 0,
  failed            integer NOT NULL DEFAULT 0,
  next_batch_at     timestamp NULL,
  request_id        varchar(64) NOT NULL,
  created           timestamp NOT NULL,
  started           timestamp NULL,
  finished          timestamp NULL
);
CREATE INDEX reapply_jobs_module ON reapply_jobs (module_id, created);
CREATE INDEX reapply_jobs_active ON reapply_jobs (state) WHERE state IN ('queued', 'running');

CREATE TABLE reapply_job_items (
  job_id      varchar(36) NOT NULL REFERENCES reapply_jobs(id) ON DELETE CASCADE,
  instance_id varchar(36) NOT NULL,
  seq         integer NOT NULL,
  state       varchar(16) NOT NULL,
  batch       integer NULL,
  sent_at     timestamp NULL,
  answered_at timestamp NULL,
  status      varchar(16) NULL,
  message     text NULL,
  PRIMARY KEY (job_id, instance_id)
);
CREATE INDEX reapply_job_items_order ON reapply_job_items (job_id, state, seq);
