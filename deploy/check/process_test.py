"""The deploy files' commands, run for real: a coordinator on a fresh Postgres database, then
  1. the compose `worker-cpu` service's exact process (its image's ENTRYPOINT + the service's
     command and environment, as deploy/docker-compose.yml and the Dockerfile say),
  2. the same with deploy/docker-compose.tls.yml on top: certificates made by
     scripts/make-tls-certs.sh, a second coordinator with the TLS file's settings, its healthcheck
     command (and the image's plaintext one failing), the worker dialing https://, and
  3. deploy/slurm/lth-worker.sbatch itself, run by bash as sbatch would, with a stand-in `srun`
     that starts the script's task once per node of SLURM_JOB_NODELIST as plain processes,
each finishing a small sweep derived from examples/digits-lenet.toml on the bundled digits, then
stopping on SIGTERM (compose's stop, Slurm's --signal) and exiting cleanly.

Container to process, and nothing else changed: compose service names resolve to 127.0.0.1 and
the coordinator's port to the test's; container paths (volumes, WORKDIR, image ENV paths) live
under a temporary root. `srun` options are dropped: there is one machine.

    python deploy/check/process_test.py [--bin-dir target/debug]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import deployfiles as df  # noqa: E402

SWEEP_TIMEOUT = 600

FAKE_SRUN = r"""#!/usr/bin/env bash
# Test stand-in for srun (deploy/check/process_test.py): one task per node of
# SLURM_JOB_NODELIST (a plain comma list here), as plain processes on this machine, with the
# variables slurmstepd sets for a task. Options are dropped. Task pids go to $LTH_TEST_SRUN_PIDS
# so the test can signal the tasks as Slurm's --signal does.
set -u
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
IFS=, read -ra nodes <<< "$SLURM_JOB_NODELIST"
pids=()
for i in "${!nodes[@]}"; do
  SLURMD_NODENAME="${nodes[$i]}" SLURM_NODEID="$i" SLURM_PROCID="$i" SLURM_LOCALID=0 SLURM_STEP_ID=0 "$@" &
  pids+=("$!")
  echo "$!" >> "$LTH_TEST_SRUN_PIDS"
done
rc=0
for p in "${pids[@]}"; do
  wait "$p" || rc=$?
done
exit "$rc"
"""


def log(msg):
    print(f"process-test: {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Failure(Exception):
    pass


def make_token(bin_dir, role, name):
    """`lth-coordinator token create`, as deploy/env.example tells the admin to run it."""
    out = subprocess.run([os.path.join(bin_dir, "lth-coordinator"), "token", "create", "--role", role, "--name", name],
                         capture_output=True, text=True, check=True).stdout
    token = re.search(r"^token: (\S+)$", out, re.M)
    line = re.search(r"^auth-file line: (.+)$", out, re.M)
    if not token or not line:
        raise Failure(f"cannot read `token create` output: {out!r}")
    return token.group(1), line.group(1)


# Every lthctl call of the test is an admin's (set in main()).
LTHCTL_ENV = {}


def lthctl(bin_dir, url, *args, timeout=60):
    r = subprocess.run([os.path.join(bin_dir, "lthctl"), "--coordinator", url, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **LTHCTL_ENV})
    if r.returncode != 0:
        raise Failure(f"lthctl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def small_sweep(path, name, metric, seed):
    """examples/digits-lenet.toml, cut to one metric, one seed, two levels, four epochs."""
    text = open(os.path.join(ROOT, "examples/digits-lenet.toml")).read()
    for key, value in (("name", f'"{name}"'), ("metrics", f'["{metric}"]'), ("seeds", f"[{seed}]"), ("levels", "2"), ("length", '"4ep"')):
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        if n != 1:
            raise Failure(f"examples/digits-lenet.toml has no `{key} = ` line to adapt")
    open(path, "w").write(text)
    return path


def run_sweep(bin_dir, url, sweep_file, worker_procs, expect_workers):
    out = lthctl(bin_dir, url, "submit", sweep_file)
    m = re.search(r"submitted sweep (\d+)", out)
    if not m:
        raise Failure(f"cannot read the sweep id from lthctl submit: {out!r}")
    sweep = m.group(1)
    deadline = time.monotonic() + SWEEP_TIMEOUT
    seen_workers = set()
    while True:
        for name, p in worker_procs:
            if p.poll() is not None:
                raise Failure(f"{name} exited ({p.returncode}) before the sweep finished")
        workers = lthctl(bin_dir, url, "workers")
        seen_workers |= {w for w in expect_workers if w in workers}
        status = lthctl(bin_dir, url, "status", sweep)
        m = re.search(r"(\d+) jobs: (\d+) succeeded, (\d+) running, (\d+) ready, (\d+) blocked, (\d+) failed", status)
        if not m:
            raise Failure(f"cannot read job counts from lthctl status: {status!r}")
        total, done, failed = int(m.group(1)), int(m.group(2)), int(m.group(6))
        if failed:
            raise Failure(f"sweep {sweep}: {failed} job(s) failed:\n{status}")
        if done == total:
            break
        if time.monotonic() > deadline:
            raise Failure(f"sweep {sweep} not done after {SWEEP_TIMEOUT} s:\n{status}")
        time.sleep(1)
    missing = set(expect_workers) - seen_workers
    if missing:
        raise Failure(f"workers {sorted(missing)} never showed up in lthctl workers")
    points = json.loads(lthctl(bin_dir, url, "results", sweep, "--format", "json"))
    levels = sorted(p["level"] for p in points)
    if levels != [0, 1, 2]:
        raise Failure(f"sweep {sweep}: results for levels {levels}, expected 0, 1, 2")
    for p in points:
        # Ten classes: chance is 0.1. A trained LeNet on the digits is far above it.
        if not 0.5 < p["accuracy_mean"] <= 1.0:
            raise Failure(f"sweep {sweep} level {p['level']}: accuracy {p['accuracy_mean']} is not a trained network's")
    log(f"sweep {sweep}: {total} jobs succeeded; accuracy by level " + ", ".join(f"{p['level']}: {p['accuracy_mean']:.3f}" for p in sorted(points, key=lambda p: p["level"])))
    return sweep


def stop(name, p, grace):
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        raise Failure(f"{name} did not stop within {grace} s of SIGTERM")
    if rc != 0:
        raise Failure(f"{name} exited {rc} on SIGTERM (expected a clean 0)")


def compose_worker(bin_dir, tmp, port, env_file, overrides=(), coordinator_host="127.0.0.1", label="worker-cpu"):
    """The compose worker-cpu service as a plain process, with deploy/.env's values `env_file`
    (and the compose override files `overrides` on top)."""
    c = df.compose(ROOT, env_file, overrides)
    svc = c["services"]["worker-cpu"]
    argv, st = df.compose_argv(ROOT, svc)
    rootfs = os.path.join(tmp, f"{label}-rootfs")
    # Container paths: mount targets, the image's volumes and WORKDIR, and paths in its ENV. A
    # bind mount of a host file (an absolute source that is a file) puts that file there.
    container_paths = {v.split(":")[1] for v in svc.get("volumes", [])} | {st.workdir}
    container_paths |= {v for k, v in st.env.items() if v.startswith("/")}
    files = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", []) if os.path.isfile(v.split(":")[0])}
    for path in container_paths:
        if path in files:
            os.makedirs(os.path.dirname(rootfs + path), exist_ok=True)
            shutil.copy(files[path], rootfs + path)
        else:
            os.makedirs(rootfs + path, exist_ok=True)

    def translate(value):
        value = value.replace("coordinator:50051", f"{coordinator_host}:{port}")
        for path in sorted(container_paths, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return rootfs + value
        return value

    env = {**st.env, **df.compose_environment(svc)}
    env = {k: translate(v) for k, v in env.items()}
    argv = [os.path.join(bin_dir, argv[0])] + [translate(a) for a in argv[1:]]
    grace = float(re.sub(r"\D", "", svc.get("stop_grace_period", "10s")))
    host_env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    log(f"compose {label}: " + " ".join(argv[1:]) + "  env " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    logf = open(os.path.join(tmp, f"{label}.log"), "w")
    p = subprocess.Popen(argv, env={**host_env, "HOME": rootfs + st.workdir, **env}, cwd=rootfs + st.workdir, stdout=logf, stderr=subprocess.STDOUT)
    return p, grace


def host_path(service, path):
    """The host file behind a container path of a compose service (its bind mounts)."""
    for v in service.get("volumes", []):
        src, target = v.split(":")[:2]
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return src + path[len(target):]
    raise Failure(f"{path} is inside none of the service's volumes")


def compose_tls(bin_dir, tmp, db_url, env_file):
    """docker-compose.tls.yml for real: certificates from scripts/make-tls-certs.sh as the README
    makes them, a coordinator with the TLS file's settings, its healthcheck command, and the
    worker-cpu service's process dialing https:// finishing a sweep. Returns the coordinator."""
    tls_dir = os.path.join(tmp, "tls")
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts/make-tls-certs.sh"), tls_dir], capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"scripts/make-tls-certs.sh failed: {r.stderr.strip()}")
    env_file = {**env_file, "LTH_TLS_DIR": tls_dir}
    c = df.compose(ROOT, env_file, df.COMPOSE_OVERRIDES)
    coord_svc = c["services"]["coordinator"]
    cenv = df.compose_environment(coord_svc)
    port = free_port()
    clog = os.path.join(tmp, "coordinator-tls.log")
    tls_env = {k: host_path(coord_svc, cenv[k]) for k in ("LTH_TLS_CERT", "LTH_TLS_KEY")}
    coord = subprocess.Popen(
        [os.path.join(bin_dir, "lth-coordinator"), "--listen", f"127.0.0.1:{port}", "--http-listen", "off", "--db", db_url,
         "--artifacts", os.path.join(tmp, "artifacts"), "--lease-seconds", "15", "--heartbeat-seconds", "2"],
        stdout=open(clog, "w"), stderr=subprocess.STDOUT, env={**os.environ, "LTH_AUTH_TOKENS": cenv["LTH_AUTH_TOKENS"], **tls_env})
    for _ in range(300):
        if "listening on" in open(clog).read():
            break
        if coord.poll() is not None:
            raise Failure(f"TLS coordinator exited: {open(clog).read()}")
        time.sleep(0.1)
    else:
        raise Failure("TLS coordinator did not start in 30 s")
    # The TLS file's healthcheck, as compose runs it in the container (localhost = the container).
    test = [a.replace("localhost:50051", f"localhost:{port}") for a in coord_svc["healthcheck"]["test"][1:]]
    health_env = {**os.environ, "LTH_TLS_CA": host_path(coord_svc, cenv["LTH_TLS_CA"])}
    r = subprocess.run([os.path.join(bin_dir, test[0]), *test[1:]], capture_output=True, text=True, timeout=30, env=health_env)
    if r.returncode != 0 or "SERVING" not in r.stdout:
        raise Failure(f"the TLS healthcheck {' '.join(test)} failed ({r.returncode}): {r.stdout.strip()} {r.stderr.strip()}")
    said = r.stdout.strip()
    # ... and the image's own HEALTHCHECK (plaintext) would not pass: the override is needed.
    plain = [a.replace("127.0.0.1:50051", f"127.0.0.1:{port}") for a in df.stage(ROOT, "lth-coordinator").healthcheck]
    r = subprocess.run([os.path.join(bin_dir, plain[0]), *plain[1:]], capture_output=True, text=True, timeout=30, env=health_env)
    if r.returncode == 0:
        raise Failure(f"the image's plaintext HEALTHCHECK passed against a TLS port: {r.stdout}")
    log(f"TLS coordinator on https://localhost:{port}: the TLS file's healthcheck says {said}; the image's plaintext one fails")
    return coord, port, env_file


def slurm_job(bin_dir, tmp, port, worker_token):
    """deploy/slurm/lth-worker.sbatch as sbatch would start it, on a two-node 'allocation'."""
    fake = os.path.join(tmp, "slurm-bin")
    os.makedirs(fake)
    open(os.path.join(fake, "srun"), "w").write(FAKE_SRUN)
    os.chmod(os.path.join(fake, "srun"), 0o755)
    slurm_tmp = os.path.join(tmp, "slurm-tmp")
    os.makedirs(slurm_tmp)
    pids = os.path.join(tmp, "srun.pids")
    token_file = os.path.join(tmp, "worker-token")
    with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(worker_token + "\n")
    env = {
        "PATH": fake + os.pathsep + os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", tmp), "USER": "lth-test", "TMPDIR": slurm_tmp,
        # What the admin exports before sbatch (deploy/README.md, Slurm):
        "LTH_COORDINATOR": f"http://127.0.0.1:{port}",
        "LTH_WORKER_BIN": os.path.join(bin_dir, "lth-worker"),
        "LTH_TOKEN_FILE": token_file,
        # Two daemons share this machine's 2 cores: one torch thread each.
        "LTH_THREADS": "1",
        # What Slurm sets for the batch script:
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node1,node2",
        "LTH_TEST_SRUN_PIDS": pids,
    }
    logf = open(os.path.join(tmp, "slurm-job.log"), "w")
    p = subprocess.Popen(["bash", os.path.join(ROOT, "deploy/slurm/lth-worker.sbatch")], env=env, cwd=tmp, stdout=logf, stderr=subprocess.STDOUT)
    return p, pids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.environ.get("LTH_BIN_DIR") or os.path.join(ROOT, "target", "debug"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin_dir)
    base_url = os.environ.get("LTH_TEST_DATABASE_URL", "postgres://root@127.0.0.1:5432/postgres")
    database = f"lth_deploy_{os.getpid()}"
    db_url = base_url.rsplit("/", 1)[0] + "/" + database
    tmp = tempfile.mkdtemp(prefix="lth-deploy-test-")
    procs = []
    started = time.monotonic()
    ok = False
    subprocess.run(["psql", base_url, "-q", "-c", f"CREATE DATABASE {database}"], check=True, capture_output=True)
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # deploy/.env as env.example tells the admin to fill it: a worker and an admin token.
        env_file = df.read_env_file(os.path.join(ROOT, "deploy/env.example"))
        worker_token, worker_line = make_token(bin_dir, "worker", "compose-workers")
        admin_token, admin_line = make_token(bin_dir, "admin", "admin")
        env_file.update(LTH_AUTH_TOKENS=f"{worker_line};{admin_line}", LTH_WORKER_TOKEN=worker_token, LTH_ADMIN_TOKEN=admin_token)
        LTHCTL_ENV["LTH_TOKEN"] = admin_token
        coordinator_env = df.compose_environment(df.compose(ROOT, env_file)["services"]["coordinator"])
        clog = os.path.join(tmp, "coordinator.log")
        coord = subprocess.Popen(
            [os.path.join(bin_dir, "lth-coordinator"), "--listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0", "--db", db_url,
             "--artifacts", os.path.join(tmp, "artifacts"), "--lease-seconds", "15", "--heartbeat-seconds", "2"],
            stdout=open(clog, "w"), stderr=subprocess.STDOUT, env={**os.environ, "LTH_AUTH_TOKENS": coordinator_env["LTH_AUTH_TOKENS"]})
        procs.append(("coordinator", coord))
        for _ in range(300):
            if "listening on" in open(clog).read():
                break
            if coord.poll() is not None:
                raise Failure(f"coordinator exited: {open(clog).read()}")
            time.sleep(0.1)
        else:
            raise Failure("coordinator did not start in 30 s")
        log(f"coordinator on {url}, Postgres database {database}, tokens from the compose file's LTH_AUTH_TOKENS")
        # Tokens are enforced: a call without one is refused.
        r = subprocess.run([os.path.join(bin_dir, "lthctl"), "--coordinator", url, "ls"], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if not k.startswith("LTH_TOKEN")})
        if r.returncode == 0:
            raise Failure("lthctl ls without a token succeeded against a coordinator with tokens")

        t = time.monotonic()
        worker, grace = compose_worker(bin_dir, tmp, port, env_file)
        procs.append(("compose worker-cpu", worker))
        run_sweep(bin_dir, url, small_sweep(os.path.join(tmp, "compose.toml"), "deploy-compose", "magnitude", 1), [("compose worker-cpu", worker)], [])
        stop("compose worker-cpu", worker, grace)
        log(f"compose worker-cpu: sweep done, stopped cleanly on SIGTERM ({time.monotonic() - t:.0f} s)")

        t = time.monotonic()
        tls_coord, tls_port, tls_env = compose_tls(bin_dir, tmp, db_url, env_file)
        procs.append(("TLS coordinator", tls_coord))
        worker, grace = compose_worker(bin_dir, tmp, tls_port, tls_env, df.COMPOSE_OVERRIDES, "localhost", "worker-cpu-tls")
        procs.append(("compose worker-cpu (TLS)", worker))
        LTHCTL_ENV["LTH_TLS_CA"] = os.path.join(tmp, "tls", "ca.crt")
        run_sweep(bin_dir, f"https://localhost:{tls_port}", small_sweep(os.path.join(tmp, "compose-tls.toml"), "deploy-compose-tls", "l1", 3),
                  [("compose worker-cpu (TLS)", worker)], [])
        del LTHCTL_ENV["LTH_TLS_CA"]
        stop("compose worker-cpu (TLS)", worker, grace)
        log(f"compose worker-cpu with docker-compose.tls.yml: sweep done over TLS, stopped cleanly on SIGTERM ({time.monotonic() - t:.0f} s)")

        t = time.monotonic()
        job, pids = slurm_job(bin_dir, tmp, port, worker_token)
        procs.append(("slurm job", job))
        run_sweep(bin_dir, url, small_sweep(os.path.join(tmp, "slurm.toml"), "deploy-slurm", "l2", 2), [("slurm job", job)],
                  ["slurm-4242-node1", "slurm-4242-node2"])
        tasks = [int(x) for x in open(pids).read().split()]
        if len(tasks) != 2:
            raise Failure(f"srun started {len(tasks)} task(s), expected one per node (2)")
        for pid in tasks:  # Slurm's --signal=TERM@300 signals every task of the job's steps
            os.kill(pid, signal.SIGTERM)
        try:
            rc = job.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise Failure("the Slurm job script did not end within 90 s of SIGTERM to its tasks")
        out = open(os.path.join(tmp, "slurm-job.log")).read()
        if rc != 0 or "all daemons stopped" not in out:
            raise Failure(f"the Slurm job script exited {rc}:\n{out[-3000:]}")
        log(f"slurm job (2 nodes): sweep done, daemons stopped on SIGTERM, script exited 0 ({time.monotonic() - t:.0f} s)")
        ok = True
    except Failure as e:
        log(f"FAILED: {e}")
        for name in ("coordinator.log", "worker-cpu.log", "coordinator-tls.log", "worker-cpu-tls.log", "slurm-job.log"):
            path = os.path.join(tmp, name)
            if os.path.exists(path):
                print(f"--- {name} (last lines)\n" + "".join(open(path).readlines()[-25:]), flush=True)
    finally:
        for name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["psql", base_url, "-q", "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], capture_output=True)
        if args.keep or not ok:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{'passed' if ok else 'failed'} in {time.monotonic() - started:.0f} s")
    print(f"deploy-process: {1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
