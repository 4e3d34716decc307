// @generated automatically by Diesel CLI.

diesel::table! {
    clusters (id) {
        #[max_length = 36]
        id -> Varchar,
        created -> Timestamp,
        updated -> Timestamp,
        #[max_length = 255]
        name -> Varchar,
        task_id -> Int4,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 36]
        datastore_version_id -> Varchar,
        #[max_length = 36]
        configuration_id -> Nullable<Varchar>,
        deleted -> Bool,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    conductor_lastseen (instance_id, method_name) {
        #[max_length = 36]
        instance_id -> Varchar,
        #[max_length = 36]
        method_name -> Varchar,
        sent -> Float8,
    }
}

diesel::table! {
    datastore_versions (id) {
        #[max_length = 36]
        id -> Varchar,
        #[max_length = 36]
        datastore_id -> Varchar,
        #[max_length = 255]
        name -> Varchar,
        #[max_length = 255]
        version -> Nullable<Varchar>,
        #[max_length = 255]
        manager -> Varchar,
        #[max_length = 255]
        image_id -> Nullable<Varchar>,
        #[max_length = 255]
        image_tags -> Nullable<Varchar>,
        #[max_length = 511]
        packages -> Nullable<Varchar>,
        active -> Bool,
    }
}

diesel::table! {
    datastores (id) {
        #[max_length = 36]
        id -> Varchar,
        #[max_length = 255]
        name -> Varchar,
        #[max_length = 36]
        default_version_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    flavors (id) {
        #[max_length = 255]
        id -> Varchar,
        #[max_length = 255]
        name -> Varchar,
        ram -> Int4,
        vcpus -> Int4,
        disk -> Int4,
        ephemeral -> Int4,
        deleted -> Bool,
    }
}

diesel::table! {
    guest_module_results (instance_id, module_id) {
        #[max_length = 36]
        instance_id -> Varchar,
        #[max_length = 64]
        module_id -> Varchar,
        #[max_length = 32]
        md5 -> Bpchar,
        #[max_length = 16]
        status -> Varchar,
        message -> Nullable<Text>,
        #[max_length = 32]
        guest_created -> Nullable<Varchar>,
        #[max_length = 32]
        guest_updated -> Nullable<Varchar>,
        reported_at -> Timestamp,
    }
}

diesel::table! {
    instance_faults (id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 36]
        instance_id -> Varchar,
        #[max_length = 255]
        message -> Varchar,
        details -> Text,
        created -> Timestamp,
        updated -> Timestamp,
        deleted -> Bool,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    instance_modules (id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 36]
        instance_id -> Varchar,
        #[max_length = 64]
        module_id -> Varchar,
        #[max_length = 32]
        md5 -> Bpchar,
        created -> Timestamp,
        updated -> Timestamp,
        deleted -> Bool,
        deleted_at -> Nullable<Timestamp>,
        clustered -> Bool,
    }
}

diesel::table! {
    instance_module_counts (module_id, md5, clustered) {
        #[max_length = 64]
        module_id -> Varchar,
        #[max_length = 32]
        md5 -> Bpchar,
        clustered -> Bool,
        instances -> Int8,
    }
}

diesel::table! {
    instances (id) {
        #[max_length = 36]
        id -> Varchar,
        created -> Timestamp,
        updated -> Timestamp,
        #[max_length = 255]
        name -> Varchar,
        #[max_length = 255]
        hostname -> Nullable<Varchar>,
        #[max_length = 64]
        compute_instance_id -> Nullable<Varchar>,
        #[max_length = 64]
        server_status -> Nullable<Varchar>,
        task_id -> Int4,
        #[max_length = 255]
        task_description -> Varchar,
        task_start_time -> Nullable<Timestamp>,
        #[max_length = 36]
        volume_id -> Nullable<Varchar>,
        volume_size -> Nullable<Int4>,
        #[max_length = 255]
        flavor_id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 36]
        datastore_version_id -> Varchar,
        #[max_length = 36]
        cluster_id -> Nullable<Varchar>,
        #[max_length = 36]
        shard_id -> Nullable<Varchar>,
        #[sql_name = "type"]
        #[max_length = 64]
        type_ -> Nullable<Varchar>,
        #[max_length = 255]
        region_id -> Varchar,
        #[max_length = 255]
        encrypted_key -> Nullable<Varchar>,
        #[max_length = 36]
        configuration_id -> Nullable<Varchar>,
        #[max_length = 36]
        slave_of_id -> Nullable<Varchar>,
        deleted -> Bool,
        deleted_at -> Nullable<Timestamp>,
        #[max_length = 255]
        compute_host -> Nullable<Varchar>,
        #[max_length = 255]
        address -> Nullable<Varchar>,
        port -> Nullable<Int4>,
        quota_held -> Bool,
        quota_ram -> Int4,
    }
}

diesel::table! {
    modules (id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 255]
        name -> Varchar,
        #[sql_name = "type"]
        #[max_length = 255]
        type_ -> Varchar,
        contents -> Text,
        #[max_length = 255]
        description -> Nullable<Varchar>,
        #[max_length = 64]
        tenant_id -> Nullable<Varchar>,
        #[max_length = 64]
        datastore_id -> Nullable<Varchar>,
        #[max_length = 64]
        datastore_version_id -> Nullable<Varchar>,
        auto_apply -> Bool,
        visible -> Bool,
        live_update -> Bool,
        priority_apply -> Bool,
        apply_order -> Int2,
        is_admin -> Bool,
        #[max_length = 32]
        md5 -> Bpchar,
        created -> Timestamp,
        updated -> Timestamp,
        deleted -> Bool,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        #[max_length = 255]
        topic -> Varchar,
        #[max_length = 64]
        method -> Varchar,
        body -> Bytea,
        #[max_length = 64]
        request_id -> Varchar,
        created -> Timestamp,
    }
}

diesel::table! {
    quota_usages (id) {
        #[max_length = 36]
        id -> Varchar,
        created -> Timestamp,
        updated -> Timestamp,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 255]
        resource -> Varchar,
        in_use -> Int4,
        reserved -> Int4,
    }
}

diesel::table! {
    quotas (id) {
        #[max_length = 36]
        id -> Varchar,
        created -> Timestamp,
        updated -> Timestamp,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 255]
        resource -> Varchar,
        hard_limit -> Int4,
    }
}

diesel::table! {
    reapply_job_items (job_id, instance_id) {
        #[max_length = 36]
        job_id -> Varchar,
        #[max_length = 36]
        instance_id -> Varchar,
        seq -> Int4,
        #[max_length = 16]
        state -> Varchar,
        batch -> Nullable<Int4>,
        sent_at -> Nullable<Timestamp>,
        answered_at -> Nullable<Timestamp>,
        #[max_length = 16]
        status -> Nullable<Varchar>,
        message -> Nullable<Text>,
        recast_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    reapply_jobs (id) {
        #[max_length = 36]
        id -> Varchar,
        #[max_length = 64]
        module_id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        is_admin -> Bool,
        #[max_length = 32]
        md5 -> Nullable<Bpchar>,
        include_clustered -> Bool,
        force -> Bool,
        batch_size -> Int4,
        batch_delay -> Int4,
        #[max_length = 16]
        state -> Varchar,
        #[max_length = 32]
        current_md5 -> Nullable<Bpchar>,
        total -> Int4,
        applied -> Int4,
        skipped -> Int4,
        failed -> Int4,
        next_batch_at -> Nullable<Timestamp>,
        #[max_length = 64]
        request_id -> Varchar,
        created -> Timestamp,
        started -> Nullable<Timestamp>,
        finished -> Nullable<Timestamp>,
        batch_sent_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    service_statuses (id) {
        #[max_length = 36]
        id -> Varchar,
        #[max_length = 36]
        instance_id -> Varchar,
        status_id -> Int4,
        #[max_length = 64]
        status_description -> Varchar,
        updated_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(clusters -> datastore_versions (datastore_version_id));
diesel::joinable!(datastore_versions -> datastores (datastore_id));
diesel::joinable!(instance_faults -> instances (instance_id));
diesel::joinable!(instance_modules -> instances (instance_id));
diesel::joinable!(instance_modules -> modules (module_id));
diesel::joinable!(instances -> clusters (cluster_id));
diesel::joinable!(instances -> datastore_versions (datastore_version_id));
diesel::joinable!(modules -> datastore_versions (datastore_version_id));
diesel::joinable!(modules -> datastores (datastore_id));
diesel::joinable!(reapply_job_items -> reapply_jobs (job_id));
diesel::joinable!(reapply_jobs -> modules (module_id));
diesel::joinable!(service_statuses -> instances (instance_id));

diesel::allow_tables_to_appear_in_same_query!(
    clusters,
    conductor_lastseen,
    datastore_versions,
    datastores,
    flavors,
    guest_module_results,
    instance_faults,
    instance_module_counts,
    instance_modules,
    instances,
    modules,
    outbox,
    quota_usages,
    quotas,
    reapply_job_items,
    reapply_jobs,
    service_statuses,
);
