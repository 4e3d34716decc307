#!/usr/bin/env python3
"""python-troveclient's library drives trove-rs through Keystone: the whole module walkthrough.

Run by tests/it/keystone.rs (python_troveclient_library_runs_the_walkthrough) with the Python of the
venv scripts/keystone made (python-troveclient and keystoneauth1 from PyPI). It logs in with a
keystoneauth1 v3 password session from the OS_* variables, lets troveclient find the `database`
endpoint in the catalog (OS_REGION_NAME selects the test's own region), and runs
docs/walkthrough.md: module create and update with payload files, instances, a cluster,
module query and apply, instance counts, and the three kinds of reapply. Every answer is checked for
Trove's field names and JSON types (docs/rest-api.md).

Prints one "ok <step>" line per call and finally "troveclient walkthrough: all calls OK"; any failure
raises, so the exit status is non-zero with a traceback. Timeouts bound every wait.
"""

import os
import re
import sys
import time

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from troveclient import client as trove_client
from troveclient import exceptions as trove_exc

HEX32 = re.compile(r"^[0-9a-f]{32}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
API_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
GUEST_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d$")
NONE = type(None)
STEPS = []


def step(name):
    STEPS.append(name)
    print(f"ok {name}", flush=True)


def check(obj, fields, what):
    """`obj` (a troveclient resource or a dict) has exactly `fields`' keys with those types."""
    info = obj._info if hasattr(obj, "_info") else obj
    missing = sorted(set(fields) - set(info))
    extra = sorted(set(info) - set(fields))
    assert not missing and not extra, f"{what}: missing {missing}, unexpected {extra}: {info}"
    for key, kind in fields.items():
        value = info[key]
        if isinstance(kind, re.Pattern):
            assert isinstance(value, str) and kind.match(value), f"{what}.{key} = {value!r}"
        else:
            # bool is an int in Python: an int field must not be a bool, and the reverse.
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            assert ok, f"{what}.{key} = {value!r}, expected {kind}"
    return info


MODULE_LIST_ITEM = {
    "id": UUID, "name": str, "type": str, "description": (str, NONE),
    "tenant_id": (str, NONE), "tenant": str, "datastore_id": (str, NONE), "datastore": str,
    "datastore_version_id": (str, NONE), "datastore_version": str, "auto_apply": bool,
    "priority_apply": bool, "is_admin": bool, "visible": bool, "apply_order": int,
    "md5": HEX32, "created": API_TIME, "updated": API_TIME,
}
MODULE_DETAIL = dict(MODULE_LIST_ITEM, live_update=bool)
MODULE_SHOW = dict(MODULE_DETAIL, instance_count=int)
LINKS = list
INSTANCE_LIST_ITEM_ADMIN = {
    "id": UUID, "name": str, "status": str, "links": LINKS, "flavor": dict, "datastore": dict,
    "region": str, "volume": dict, "tenant_id": HEX32,
}
INSTANCE_DETAIL_ADMIN = dict(
    INSTANCE_LIST_ITEM_ADMIN, created=API_TIME, updated=API_TIME, server_id=(str, NONE),
    volume_id=(str, NONE), encrypted_rpc_messaging=bool,
)
COUNT_ITEM = {
    "module_name": str, "module_id": UUID, "module_md5": HEX32, "instance_count": int,
    "current": bool, "min_updated_date": API_TIME, "max_updated_date": API_TIME,
}
GUEST_RESULT = {
    "id": UUID, "name": str, "type": str, "datastore": str, "datastore_version": str,
    "tenant": str, "md5": HEX32, "status": str, "message": str, "created": GUEST_TIME,
    "updated": GUEST_TIME, "removed": (str, NONE), "auto_apply": bool, "visible": bool,
    "is_admin": bool, "contents": (str, NONE),
}
CLUSTER = {
    "id": UUID, "name": str, "task": dict, "created": API_TIME, "updated": API_TIME,
    "links": LINKS, "datastore": dict, "instances": list,
}
# Once its server has an address: Trove's `ip` (strings) and `addresses` (dicts; ours add `port`).
ADDRESSED = {"ip": list, "addresses": list}
CLUSTER_BUILT = dict(CLUSTER, ip=list)


def check_address(info, what):
    """The address a client connects to: `ip` names the `addresses` entry, which has a port."""
    entry = info["addresses"][0]
    assert info["ip"] == [entry["address"]], f"{what}: {info}"
    assert isinstance(entry["port"], int) and entry["port"] > 0, f"{what}: {info}"


def wait(what, fn, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def main():
    region = os.environ["OS_REGION_NAME"]
    auth = v3.Password(
        auth_url=os.environ["OS_AUTH_URL"], username=os.environ["OS_USERNAME"],
        password=os.environ["OS_PASSWORD"], project_name=os.environ["OS_PROJECT_NAME"],
        user_domain_name=os.environ["OS_USER_DOMAIN_NAME"],
        project_domain_name=os.environ["OS_PROJECT_DOMAIN_NAME"])
    sess = ks_session.Session(auth=auth, timeout=60)
    cs = trove_client.Client("1.0", session=sess, region_name=region, service_type="database",
                             endpoint_type="publicURL")
    project_id = sess.get_project_id()
    endpoint = sess.get_endpoint(service_type="database", interface="public", region_name=region)
    assert endpoint.endswith(f"/v1.0/{project_id}"), endpoint
    step(f"keystone session, catalog endpoint {endpoint}")

    work = os.environ["TROVE_TEST_WORKDIR"]
    files = {}
    for v in (1, 2, 3, 4):
        files[v] = os.path.join(work, f"ping{v}.dat")
        with open(files[v], "w") as f:
            f.write(f"message=Module.V{v}\n")

    def contents(v):
        with open(files[v], "rb") as f:
            return f.read()

    # trove module-create pymod ping ping1.dat --live_update
    mod = cs.modules.create("pymod", "ping", contents(1), live_update=True)
    info = check(mod, MODULE_DETAIL, "module-create")
    assert info["tenant_id"] == project_id and info["is_admin"] is True, info
    md5_1 = info["md5"]
    step("modules.create")
    check(cs.modules.get(mod.id), MODULE_SHOW, "module-show")
    listed = [m for m in cs.modules.list() if m.id == mod.id]
    assert len(listed) == 1
    check(listed[0], MODULE_LIST_ITEM, "module-list item")
    step("modules.get / modules.list")

    # trove create pyinst 15 --size 1 --module pymod --datastore mysql
    inst = cs.instances.create("pyinst", "15", volume={"size": 1}, datastore="mysql",
                               modules=[mod.id])
    info = check(inst, INSTANCE_DETAIL_ADMIN, "instance-create")
    assert info["status"] == "BUILD" and info["tenant_id"] == project_id, info
    assert isinstance(info["flavor"]["id"], str) and isinstance(info["volume"]["size"], int)
    step("instances.create")
    wait("pyinst ACTIVE", lambda: cs.instances.get(inst.id).status == "ACTIVE")
    shown = check(cs.instances.get(inst.id), dict(INSTANCE_DETAIL_ADMIN, **ADDRESSED),
                  "instance-show")
    check_address(shown, "instance-show")
    step("instances.get ACTIVE")

    # trove module-query pyinst
    results = wait("module-query result", lambda: [
        r for r in cs.instances.module_query(inst.id) if r.message == "Module.V1"], timeout=60)
    check(results[0], GUEST_RESULT, "module-query item")
    assert results[0].status == "OK"
    step("instances.module_query")

    def counts(include_clustered=False):
        items = cs.modules.instances(mod, include_clustered=include_clustered, count_only=True)
        for i in items:
            check(i, COUNT_ITEM, "module-instance-count item")
        return {(i.module_md5, i.current): i.instance_count for i in items}

    assert counts() == {(md5_1, True): 1}, counts()
    step("modules.instances count_only")
    members = cs.modules.instances(mod)
    assert [m.id for m in members] == [inst.id]
    check(members[0], dict(INSTANCE_LIST_ITEM_ADMIN, **ADDRESSED), "module-instances item")
    step("modules.instances")

    # trove module-update pymod --file ping2.dat
    updated = cs.modules.update(mod, contents=contents(2))
    info = check(updated, MODULE_DETAIL, "module-update")
    md5_2 = info["md5"]
    assert md5_2 != md5_1
    step("modules.update")

    # trove cluster-create pyclust redis 3.2.6 --instance=flavor=15,volume=1,module=pymod (x3)
    member = {"flavorRef": "15", "volume": {"size": 1}, "modules": [{"id": mod.id}]}
    cluster = cs.clusters.create("pyclust", "redis", "3.2.6", instances=[dict(member)] * 3)
    info = check(cluster, CLUSTER, "cluster-create")
    assert info["task"]["name"] == "BUILDING" and len(info["instances"]) == 3, info
    step("clusters.create")
    assert counts() == {(md5_1, False): 1}, counts()
    assert counts(True) == {(md5_1, False): 1, (md5_2, True): 3}, counts(True)
    step("modules.instances include_clustered")

    def cluster_ready():
        c = cs.clusters.get(cluster.id)
        states = [cs.instances.get(i["id"]).status for i in c.instances]
        return c if c.task["name"] == "NONE" and states == ["ACTIVE"] * 3 else None

    shown = wait("pyclust ready", cluster_ready)
    info = check(shown, CLUSTER_BUILT, "cluster-show")
    assert len(info["ip"]) == 3, info
    step("clusters.get")

    # trove module-apply <instance> pymod: the single instance gets V2
    applied = cs.instances.module_apply(inst.id, [mod.id])
    assert len(applied) == 1
    check(applied[0], GUEST_RESULT, "module-apply item")
    assert applied[0].message == "Module.V2", applied[0]._info
    step("instances.module_apply")
    assert counts(True) == {(md5_2, True): 4}, counts(True)

    # trove create pyinst_2 15 --size 1 --module pymod (default datastore)
    inst2 = cs.instances.create("pyinst_2", "15", volume={"size": 1}, modules=[mod.id])
    check(inst2, INSTANCE_DETAIL_ADMIN, "instance-create 2")
    wait("pyinst_2 ACTIVE", lambda: cs.instances.get(inst2.id).status == "ACTIVE")
    wait("pyinst_2 has the module", lambda: counts(True) == {(md5_2, True): 5}, timeout=60)
    for i in cs.instances.list():
        check_address(check(i, dict(INSTANCE_LIST_ITEM_ADMIN, **ADDRESSED), "instance-list item"),
                      "instance-list item")
    assert {i.id for i in cs.instances.list()} == {inst.id, inst2.id}
    assert len(cs.instances.list(include_clustered=True)) == 5
    step("instances.list")

    def reapply_done(expected_jobs):
        _, body = cs.client.get(f"/modules/{mod.id}/reapply")
        jobs = body["reapply_jobs"]
        return jobs[0] if len(jobs) == expected_jobs and jobs[0]["state"] == "finished" else None

    # New contents V3, then trove module-reapply pymod --md5=<V2> --include_clustered
    info = check(cs.modules.update(mod, contents=contents(3)), MODULE_DETAIL, "module-update V3")
    md5_3 = info["md5"]
    assert cs.modules.reapply(mod, md5=md5_2, include_clustered=True) is None
    job = wait("reapply --md5 finished", lambda: reapply_done(1))
    assert job["applied"] == 5, job
    assert counts(True) == {(md5_3, True): 5}, counts(True)
    step("modules.reapply md5")

    # V4 and a forced reapply: even current ones are redone
    info = check(cs.modules.update(mod, contents=contents(4)), MODULE_DETAIL, "module-update V4")
    md5_4 = info["md5"]
    cs.modules.reapply(mod, md5=md5_3, include_clustered=True, force=True)
    wait("reapply --force finished", lambda: reapply_done(2))
    assert counts(True) == {(md5_4, True): 5}, counts(True)
    step("modules.reapply force")

    # trove module-reapply pymod --include_clustered --batch_size=1 --delay=1
    cs.modules.reapply(mod, include_clustered=True, batch_size=1, delay=1, force=True)
    job = wait("batched reapply finished", lambda: reapply_done(3))
    assert job["batch_size"] == 1 and job["applied"] == 5, job
    step("modules.reapply batch_size=1")

    # An unknown module is a troveclient NotFound (Trove's fault body parsed by the client).
    try:
        cs.modules.get("00000000-0000-0000-0000-000000000000")
        raise AssertionError("expected NotFound")
    except trove_exc.NotFound as e:
        assert "could not be found" in str(e), str(e)
    step("faults parse as troveclient exceptions")

    print(f"troveclient walkthrough: all calls OK ({len(STEPS)} steps)", flush=True)


if __name__ == "__main__":
    main()
    sys.exit(0)
