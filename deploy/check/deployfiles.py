"""Reading the deploy files the way their engines do: Dockerfile stages, the compose file with its
variable interpolation, the Slurm script's task command, and the rendered Kubernetes objects.

Shared by static_checks.py (schemas, lint, flag drift) and process_test.py (which runs the same
commands as plain processes), so both look at exactly the same commands.
"""

import json
import os
import re
import shlex

import yaml

# Which Dockerfile (and stage) builds each image name used in compose and Kubernetes.
IMAGES = {
    "lth-coordinator": ("deploy/docker/coordinator.Dockerfile", "coordinator"),
    "lth-worker": ("deploy/docker/worker.Dockerfile", "worker"),
    "lth-worker-cpu": ("deploy/docker/worker.Dockerfile", "worker-cpu"),
}
PROGRAMS = ("lth-coordinator", "lth-worker", "lthctl")


# --- Dockerfiles ---------------------------------------------------------------------------

class Stage:
    def __init__(self, base, name):
        self.base = base
        self.name = name
        self.instructions = []  # (keyword, rest, line number)
        self.env = {}
        self.entrypoint = None
        self.cmd = None
        self.user = None
        self.workdir = "/"
        self.healthcheck = None


def _logical_lines(text):
    """Dockerfile lines with continuations joined and comments dropped, with line numbers."""
    out, buf, start = [], "", None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if start is None:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        out.append((start, buf.strip()))
        buf, start = "", None
    if buf:
        out.append((start, buf.strip()))
    return out


def _exec_form(rest):
    rest = rest.strip()
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def _env_pairs(rest):
    parts = shlex.split(rest)
    if len(parts) >= 2 and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts)


def parse_dockerfile(path):
    """Stages by name (and index), in order. ARG defaults are substituted in FROM lines."""
    args, stages = {}, []
    for number, line in _logical_lines(open(path).read()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if keyword == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest).split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stage = Stage(words[0], name)
            parent = next((s for s in stages if s.name == words[0]), None)
            if parent:  # FROM <earlier stage>: inherits its image config
                stage.env = dict(parent.env)
                stage.entrypoint, stage.cmd, stage.user = parent.entrypoint, parent.cmd, parent.user
                stage.workdir, stage.healthcheck = parent.workdir, parent.healthcheck
            stages.append(stage)
            continue
        stage = stages[-1]
        stage.instructions.append((keyword, rest, number))
        if keyword == "ENV":
            stage.env.update(_env_pairs(rest))
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = _exec_form(rest)
            stage.cmd = None  # a new ENTRYPOINT resets an inherited CMD
        elif keyword == "CMD":
            stage.cmd = _exec_form(rest)
        elif keyword == "USER":
            stage.user = rest.strip()
        elif keyword == "WORKDIR":
            stage.workdir = rest.strip()
        elif keyword == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(.*)$", rest)
            stage.healthcheck = _exec_form(m.group(1)) if m else None
    return stages


def stage(root, image_key):
    dockerfile, target = IMAGES[image_key]
    return next(s for s in parse_dockerfile(os.path.join(root, dockerfile)) if s.name == target)


def image_key(image):
    """`registry/x/lth-worker:0.1.0-cpu` -> `lth-worker-cpu`; None for images lth does not build."""
    name, _, tag = image.rpartition("/")[2].partition(":")
    if name == "lth-worker" and tag.endswith("-cpu"):
        return "lth-worker-cpu"
    return name if name in IMAGES else None


# --- compose -------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


class InterpolationError(Exception):
    pass


def interpolate(value, env):
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        have = env.get(name)
        if op in (":-", "-"):
            return have if (have if op == ":-" else have is not None) else arg
        if op in (":?", "?"):
            if have is None or (op == ":?" and have == ""):
                raise InterpolationError(f"${{{name}}}: {arg}")
            return have
        return have or ""

    return _VAR.sub(one, value)


def read_env_file(path):
    env = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            env[k.strip()] = v.split(" #")[0].strip()
    return env


# Compose files as the README runs them: the file alone, and with each override file on top.
COMPOSE_FILE = "deploy/docker-compose.yml"
COMPOSE_OVERRIDES = ("deploy/docker-compose.tls.yml",)


def _volume_target(v):
    return v.get("target") if isinstance(v, dict) else str(v).split(":")[1]


def merge_compose(base, over):
    """`docker compose -f base -f over`, for the keys lth's files use (compose-spec merge rules):
    mappings merge key by key (environment, labels, depends_on, ...), `volumes` and `ports` of a
    service merge by container target / by value, other sequences and scalars are replaced
    (command, entrypoint, healthcheck.test, profiles)."""
    def merge(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v, path + (k,)) if k in a else v
            return out
        if path[-1:] == ("environment",) and isinstance(a, (dict, list)) and isinstance(b, (dict, list)):
            return {**compose_environment({"environment": a}), **compose_environment({"environment": b})}
        if len(path) == 3 and path[0] == "services" and path[2] == "volumes" and isinstance(a, list) and isinstance(b, list):
            targets = {_volume_target(v) for v in b}
            return [v for v in a if _volume_target(v) not in targets] + list(b)
        if len(path) == 3 and path[0] == "services" and path[2] == "ports" and isinstance(a, list) and isinstance(b, list):
            return list(a) + [p for p in b if p not in a]
        return b
    return merge(base, over, ())


def compose(root, env, overrides=()):
    raw = yaml.safe_load(open(os.path.join(root, COMPOSE_FILE)))
    for rel in overrides:
        raw = merge_compose(raw, yaml.safe_load(open(os.path.join(root, rel))))
    return interpolate(raw, env)


def compose_environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def compose_image_key(service):
    build = service.get("build") or {}
    if isinstance(build, dict) and build.get("dockerfile"):
        target = build.get("target")
        for key, (dockerfile, stage_name) in IMAGES.items():
            if dockerfile == build["dockerfile"] and (target or stage_name) == stage_name:
                return key
        if target is None:  # the Dockerfile's default target is its last stage
            return image_key(service.get("image", ""))
    return image_key(service.get("image", ""))


def compose_argv(root, service):
    """The process a compose service runs: image ENTRYPOINT + (service command or image CMD)."""
    key = compose_image_key(service)
    st = stage(root, key)
    entry = service.get("entrypoint")
    entry = shlex.split(entry) if isinstance(entry, str) else (entry or st.entrypoint or [])
    cmd = service.get("command")
    cmd = shlex.split(cmd) if isinstance(cmd, str) else (cmd if cmd is not None else (st.cmd or []))
    return list(entry) + list(cmd), st


# --- Slurm ---------------------------------------------------------------------------------

def slurm_task_script(root):
    """The bash program that `srun ... bash -c '...'` runs on every node."""
    text = open(os.path.join(root, "deploy/slurm/lth-worker.sbatch")).read()
    m = re.search(r"^srun [^\n]*\\\n\s*bash -c '\n(.*?)\n\s*'\s*$", text, re.S | re.M)
    if not m:
        raise ValueError("deploy/slurm/lth-worker.sbatch: no `srun ... bash -c '...'` task found")
    return m.group(1)


def slurm_worker_argv(root):
    """The lth-worker command of the task script, with its shell words (values unexpanded)."""
    task = slurm_task_script(root)
    m = re.search(r'exec "\$LTH_WORKER_BIN" (.*)$', task, re.S)
    if not m:
        raise ValueError("deploy/slurm/lth-worker.sbatch: the task does not `exec \"$LTH_WORKER_BIN\" ...`")
    return ["lth-worker"] + shlex.split(m.group(1).replace("\\\n", " "), comments=False)


# The Slurm script's own settings, read by the script and not by lth-worker.
SLURM_SCRIPT_VARIABLES = {"LTH_WORKER_BIN"}


def slurm_env_names(root):
    """LTH_* variables the script exports to the daemon (each must be one of lth-worker's)."""
    text = open(os.path.join(root, "deploy/slurm/lth-worker.sbatch")).read()
    return sorted(set(re.findall(r"^export (LTH_\w+)", text, re.M)) - SLURM_SCRIPT_VARIABLES)


# --- Kubernetes ----------------------------------------------------------------------------

def objects(rendered_yaml):
    return [d for d in yaml.safe_load_all(rendered_yaml) if d]


def pod_specs(objs):
    """(object, pod spec) for every workload."""
    for o in objs:
        kind = o.get("kind")
        spec = o.get("spec") or {}
        if kind in ("Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet"):
            yield o, spec["template"]["spec"]
        elif kind == "CronJob":
            yield o, spec["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield o, spec


def container_env_names(container, objs):
    names = [e["name"] for e in container.get("env", [])]
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef") or src.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in src else "Secret"
        obj = by_name.get((kind, ref["name"]))
        if obj:
            names.extend((obj.get("data") or {}).keys())
    return names


def container_env_values(container, objs):
    values = {}
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            obj = by_name.get(("ConfigMap", src["configMapRef"]["name"]))
            values.update((obj or {}).get("data") or {})
    for e in container.get("env", []):
        if "value" in e:
            values[e["name"]] = e["value"]
    return values
