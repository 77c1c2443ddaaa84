"""The static checks of deploy/ (no container engine runs here): Kubernetes manifests rendered with
Kustomize and validated against the Kubernetes schemas, the compose file against the compose-spec
schema, hadolint and a reference check on the Dockerfiles, shellcheck on the scripts, the policy
the issue asks of every manifest (pinned images, resources, non-root, grace periods, loopback-only
ports), and the flag-drift check: every flag and LTH_* variable an entrypoint uses must exist in
the binary's own `--help`. Then the same checks run on deliberately broken copies and must fail.

    python deploy/check/static_checks.py [--bin-dir target/debug]

Run through deploy/check/run.sh, which installs the tools first (deploy/check/tools.sh).
"""

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deployfiles as df  # noqa: E402
import kustomize  # noqa: E402

KUSTOMIZATIONS = ["deploy/k8s/base", "deploy/k8s/overlays/dev", "deploy/k8s/overlays/production"]
# Every component is rendered: those no overlay above uses (mtls, service-monitor) on top of this
# overlay, in a kustomization generated for the check.
COMPONENT_BASE = "deploy/k8s/overlays/production"
COMPONENTS_DIR = "deploy/k8s/components"
# Oldest Kubernetes the manifests are meant for, and the newest schema kubernetes-validate bundles.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
# Secrets the admin creates (overlays/production); every other referenced Secret must be rendered.
EXTERNAL_SECRETS = {"lth-db", "lth-artifacts", "lth-auth", "lth-worker-token",
                    # components/tls, components/mtls, components/service-monitor
                    "lth-coordinator-tls", "lth-tls-ca", "lth-tls-client-ca", "lth-worker-tls", "lth-metrics-token"}
# Custom resources and the models their schemas come from (PyPI `cloudcoil-models-prometheus-operator`,
# generated from the Prometheus Operator's CRDs); kubernetes-validate knows only built-in kinds.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
# The worker daemon's metrics port in the manifests (LTH_METRICS_LISTEN), and the coordinator's HTTP port.
WORKER_METRICS_PORT = 9102
NAMESPACE = "lth"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "RuntimeClass", "PriorityClass", "StorageClass", "PersistentVolume"}
SHELL_SCRIPTS = ["scripts/*.sh", "deploy/check/*.sh", "deploy/slurm/*.sbatch"]


class Tools:
    def __init__(self, tools_dir, bin_dir):
        self.dir = tools_dir
        self.venv_bin = os.path.join(tools_dir, "venv", "bin")
        self.bin_dir = bin_dir

    def tool(self, name):
        path = os.path.join(self.venv_bin, name)
        return path if os.path.exists(path) else shutil.which(name) or name


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


# --- Kubernetes --------------------------------------------------------------------------

def components_in_use(root):
    """Component folders (relative to root) that the rendered overlays name."""
    used = set()
    for k in KUSTOMIZATIONS:
        path = os.path.join(root, k, "kustomization.yaml")
        doc = df.yaml.safe_load(open(path)) if os.path.exists(path) else {}
        for c in (doc or {}).get("components", []) or []:
            used.add(os.path.relpath(os.path.normpath(os.path.join(root, k, c)), root))
    return used


def render_all(root, tools):
    out, errors = {}, []
    for k in KUSTOMIZATIONS:
        try:
            out[k] = kustomize.render(os.path.join(root, k), tools.dir)
        except kustomize.KustomizeError as e:
            errors.append(f"{k}: kustomize: {e}")
    used = components_in_use(root)
    comp_dir = os.path.join(root, COMPONENTS_DIR)
    for name in sorted(os.listdir(comp_dir)):
        rel = f"{COMPONENTS_DIR}/{name}"
        if rel in used or not os.path.exists(os.path.join(comp_dir, name, "kustomization.yaml")):
            continue
        key = f"{COMPONENT_BASE} + {rel}"
        # Inside deploy/k8s, so that Kustomize's root-only loader accepts both folders.
        gen = tempfile.mkdtemp(prefix=".check-", dir=os.path.join(root, "deploy/k8s"))
        try:
            with open(os.path.join(gen, "kustomization.yaml"), "w") as f:
                # As if the component were listed in that overlay (whose namespace it then takes).
                f.write(f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {NAMESPACE}\n"
                        f"resources: [{os.path.relpath(os.path.join(root, COMPONENT_BASE), gen)}]\n"
                        f"components: [{os.path.relpath(os.path.join(comp_dir, name), gen)}]\n")
            out[key] = kustomize.render(gen, tools.dir)
        except kustomize.KustomizeError as e:
            errors.append(f"{key}: kustomize: {e}")
        finally:
            shutil.rmtree(gen, ignore_errors=True)
    return out, errors


@functools.lru_cache(maxsize=None)
def crd_models():
    """{(apiVersion, kind): pydantic model} with unknown fields refused at every level, as the API
    server's strict field validation does for a structural CRD schema."""
    import inspect
    import pydantic
    from cloudcoil.models.prometheus_operator import v1
    from cloudcoil import apimachinery
    classes = {c for mod in (v1, apimachinery) for _, c in inspect.getmembers(mod, inspect.isclass) if issubclass(c, pydantic.BaseModel)}
    for c in classes:
        c.model_config["extra"] = "forbid"
    # Twice: a model embeds the schemas of the models it uses as they were when it was rebuilt.
    for _ in range(2):
        for c in classes:
            c.model_rebuild(force=True)
    return {(api, kind): getattr(v1, kind) for api, kind in CRD_KINDS}


def check_crd_objects(label, objs):
    import pydantic
    errors = []
    for o in objs:
        model = crd_models()[(o.get("apiVersion"), o.get("kind"))]
        try:
            model.model_validate(o)
        except pydantic.ValidationError as e:
            for err in e.errors():
                where = ".".join(str(x) for x in err["loc"])
                errors.append(f"{label}: {o['kind']}/{o['metadata']['name']}: {where}: {err['msg']}")
    return errors


def check_k8s_schemas(root, tools):
    rendered, errors = render_all(root, tools)
    with tempfile.TemporaryDirectory() as tmp:
        for k, text in rendered.items():
            objs = df.objects(text)
            custom = [o for o in objs if (o.get("apiVersion"), o.get("kind")) in CRD_KINDS]
            errors += check_crd_objects(k, custom)
            path = os.path.join(tmp, re.sub(r"[^\w.-]+", "_", k) + ".yaml")
            open(path, "w").write(df.yaml.safe_dump_all([o for o in objs if o not in custom], sort_keys=False))
            for version in K8S_VERSIONS:
                r = run([tools.tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, path])
                out = (r.stdout + r.stderr).splitlines()
                if r.returncode != 0:
                    errors += [f"{k} (Kubernetes {version}): {line}" for line in out if line.strip()]
                # A kind without a schema is only a warning to kubernetes-validate: it would pass unchecked.
                errors += [f"{k} (Kubernetes {version}): {line} (add its schema to the checks)" for line in out if "Couldn't find schema" in line]
    return errors


def check_k8s_policy(root, tools):
    rendered, errors = render_all(root, tools)
    for k, text in rendered.items():
        objs = df.objects(text)
        names = {(o["kind"], o["metadata"]["name"]) for o in objs}
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED and o["metadata"].get("namespace") != NAMESPACE:
                errors.append(f"{k}: {o['kind']}/{o['metadata']['name']} is in namespace {o['metadata'].get('namespace')!r}, not {NAMESPACE!r}")
        for o, pod in df.pod_specs(objs):
            where = f"{k}: {o['kind']}/{o['metadata']['name']}"
            psc = pod.get("securityContext") or {}
            if not psc.get("runAsNonRoot"):
                errors.append(f"{where}: pod securityContext.runAsNonRoot must be true")
            containers = pod.get("containers", []) + pod.get("initContainers", [])
            for c in containers:
                cw = f"{where} container {c['name']}"
                image = c.get("image", "")
                tag = image.rpartition("/")[2].partition(":")[2]
                if not tag or tag == "latest":
                    errors.append(f"{cw}: image {image!r} needs a pinned tag (not :latest)")
                res = c.get("resources") or {}
                if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory"):
                    errors.append(f"{cw}: resources.requests.cpu and .memory are required (else BestEffort, evicted first)")
                if not (res.get("limits") or {}).get("memory"):
                    errors.append(f"{cw}: resources.limits.memory is required")
                sc = c.get("securityContext") or {}
                if sc.get("allowPrivilegeEscalation") is not False:
                    errors.append(f"{cw}: securityContext.allowPrivilegeEscalation must be false")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    errors.append(f"{cw}: securityContext.capabilities.drop must include ALL")
                for e in c.get("env", []):
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and ("Secret", ref["name"]) not in names:
                        generated = [n for kind, n in names if kind == "Secret" and re.fullmatch(re.escape(ref["name"]) + r"-[a-z0-9]{10}", n)]
                        if generated:
                            errors.append(f"{cw}: env {e['name']} reads Secret {ref['name']!r}, but the render generates {generated[0]!r} (a namespace mismatch keeps Kustomize from linking them)")
                        elif ref["name"] not in EXTERNAL_SECRETS:
                            errors.append(f"{cw}: env {e['name']} reads Secret {ref['name']!r}, which nothing creates")
                for src in c.get("envFrom", []):
                    ref = src.get("configMapRef")
                    if ref and ("ConfigMap", ref["name"]) not in names:
                        errors.append(f"{cw}: envFrom ConfigMap {ref['name']!r} is not rendered")
                key = df.image_key(image)
                if key and key.startswith("lth-coordinator") and o["kind"] == "Deployment":
                    env = df.container_env_values(c, objs)
                    if env.get("LTH_INSECURE", "").lower() in ("true", "1", "yes"):
                        errors.append(f"{cw}: LTH_INSECURE is set: the coordinator must take tokens (LTH_AUTH_TOKENS / LTH_AUTH_FILE), not run open")
                    if not ({"LTH_AUTH_TOKENS", "LTH_AUTH_FILE"} & ({e["name"] for e in c.get("env", [])} | set(env))):
                        errors.append(f"{cw}: no LTH_AUTH_TOKENS or LTH_AUTH_FILE: without tokens it refuses to listen on the pod network")
                if key and key.startswith("lth-worker") and o["kind"] == "DaemonSet":
                    env_names = {e["name"] for e in c.get("env", [])} | set(df.container_env_values(c, objs))
                    if not {"LTH_TOKEN", "LTH_TOKEN_FILE"} & env_names:
                        errors.append(f"{cw}: no LTH_TOKEN or LTH_TOKEN_FILE: the coordinator refuses workers without a worker token")
                if key and key.startswith("lth-worker") and o["kind"] == "DaemonSet":
                    env = df.container_env_values(c, objs)
                    grace = float(env.get("LTH_SHUTDOWN_GRACE_SECONDS", 60))
                    tgp = pod.get("terminationGracePeriodSeconds", 30)
                    if tgp < grace + 30:
                        errors.append(f"{cw}: terminationGracePeriodSeconds {tgp} must exceed LTH_SHUTDOWN_GRACE_SECONDS {grace:g} + 30 s for the checkpoint upload")
                    gpu_request = (res.get("limits") or {}).get("nvidia.com/gpu")
                    if gpu_request is not None:
                        if pod.get("runtimeClassName") != "nvidia":
                            errors.append(f"{cw}: a GPU worker needs runtimeClassName: nvidia")
                        if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
                            errors.append(f"{cw}: a GPU worker needs the nvidia.com/gpu toleration")
                        count = (pod.get("nodeSelector") or {}).get("nvidia.com/gpu.count")
                        if str(count) != str(gpu_request):
                            errors.append(f"{cw}: requests {gpu_request} GPUs but selects nodes with nvidia.com/gpu.count={count}: it must take all of a node's GPUs")
        for o, pod in df.pod_specs(objs):
            for v in pod.get("volumes", []):
                name = (v.get("secret") or {}).get("secretName")
                if name and ("Secret", name) not in names and name not in EXTERNAL_SECRETS:
                    errors.append(f"{k}: {o['kind']}/{o['metadata']['name']} volume {v['name']} mounts Secret {name!r}, which nothing creates")
        errors += k8s_tls_and_metrics(k, objs)
        if not any(o["kind"] == "PodDisruptionBudget" for o in objs):
            errors.append(f"{k}: no PodDisruptionBudget for the coordinator")
        deps = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "lth-coordinator"]
        if deps and deps[0]["spec"].get("replicas", 1) < 2:
            errors.append(f"{k}: the coordinator Deployment needs at least 2 replicas")
    return errors


def mounted(container, path):
    """Is `path` inside one of the container's volume mounts?"""
    return any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/") for m in container.get("volumeMounts", []))


def selects(match_labels, labels):
    return all(labels.get(key) == value for key, value in (match_labels or {}).items())


def admitted(objs, pod_labels, port):
    """Does some NetworkPolicy let traffic in to pods with these labels on `port`?"""
    for np in (o for o in objs if o["kind"] == "NetworkPolicy"):
        spec = np["spec"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]) or not selects((spec.get("podSelector") or {}).get("matchLabels"), pod_labels):
            continue
        for rule in spec.get("ingress", []) or []:
            if not rule.get("ports") or any(p.get("port") == port for p in rule["ports"]):
                return True
    return False


def k8s_tls_and_metrics(k, objs):
    """TLS set up end to end (the coordinator's files mounted, no plaintext grpc probe, every
    worker dialing https:// with a mounted CA, client certificates for mutual TLS), the workers'
    metrics port declared, annotated and admitted by a NetworkPolicy, and the Prometheus
    Operator's monitors pointing at ports that exist."""
    errors = []
    containers = [(o, pod, c) for o, pod in df.pod_specs(objs) for c in pod.get("containers", [])]
    role = lambda c: (df.image_key(c.get("image", "")) or "").split("-")[1] if df.image_key(c.get("image", "")) else None
    coord = [(o, pod, c) for o, pod, c in containers if role(c) == "coordinator"]
    workers = [(o, pod, c) for o, pod, c in containers if role(c) == "worker"]
    tls = client_ca = False
    for o, pod, c in coord:
        where = f"{k}: {o['kind']}/{o['metadata']['name']} container {c['name']}"
        env = df.container_env_values(c, objs)
        tls, client_ca = "LTH_TLS_CERT" in env, "LTH_TLS_CLIENT_CA" in env
        for var in ("LTH_TLS_CERT", "LTH_TLS_KEY", "LTH_TLS_CLIENT_CA"):
            if var in env and not mounted(c, env[var]):
                errors.append(f"{where}: {var}={env[var]} is not under any volumeMount of the container (mount the Secret there)")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if tls and "grpc" in (c.get(probe) or {}):
                errors.append(f"{where}: {probe} is a grpc probe, but the gRPC port serves TLS and Kubernetes' grpc probes speak plaintext: use httpGet /healthz on the http port")
    for o, pod, c in workers:
        where = f"{k}: {o['kind']}/{o['metadata']['name']} container {c['name']}"
        env = df.container_env_values(c, objs)
        args = c.get("args") or []
        url = args[args.index("--coordinator") + 1] if "--coordinator" in args else env.get("LTH_COORDINATOR", "")
        if coord and tls and not url.startswith("https://"):
            errors.append(f"{where}: dials {url} in plaintext, but the coordinator serves TLS (LTH_TLS_CERT): use https:// and LTH_TLS_CA")
        if coord and not tls and url.startswith("https://"):
            errors.append(f"{where}: dials {url}, but the coordinator serves no TLS (no LTH_TLS_CERT)")
        needed = (["LTH_TLS_CA"] if tls else []) + (["LTH_TLS_CLIENT_CERT", "LTH_TLS_CLIENT_KEY"] if client_ca else [])
        for var in needed:
            if var not in env:
                errors.append(f"{where}: no {var}, which {'TLS' if var == 'LTH_TLS_CA' else 'mutual TLS (LTH_TLS_CLIENT_CA on the coordinator)'} needs")
            elif not mounted(c, env[var]):
                errors.append(f"{where}: {var}={env[var]} is not under any volumeMount of the container")
        listen = env.get("LTH_METRICS_LISTEN", "off")
        if listen != "off":
            port = int(listen.rsplit(":", 1)[1])
            if port not in [p.get("containerPort") for p in c.get("ports", [])]:
                errors.append(f"{where}: LTH_METRICS_LISTEN={listen} but the container declares no containerPort {port}")
            meta = o["spec"]["template"].get("metadata") or {}
            annotations = meta.get("annotations") or {}
            if annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") != str(port):
                errors.append(f"{where}: prometheus.io/port {annotations.get('prometheus.io/port')!r} is not LTH_METRICS_LISTEN's port {port}")
            if not admitted(objs, meta.get("labels") or {}, port):
                errors.append(f"{where}: no NetworkPolicy admits the metrics port {port} (LTH_METRICS_LISTEN) to these pods: Prometheus cannot scrape them")
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for m in (o for o in objs if o["kind"] in ("ServiceMonitor", "PodMonitor")):
        where = f"{k}: {m['kind']}/{m['metadata']['name']}"
        match = (m["spec"].get("selector") or {}).get("matchLabels")
        if m["kind"] == "ServiceMonitor":
            targets = [svc for svc in objs if svc["kind"] == "Service" and selects(match, svc["metadata"].get("labels") or {})]
            ports = {p.get("name") for svc in targets for p in svc["spec"].get("ports", [])}
            endpoints = m["spec"].get("endpoints", [])
        else:
            targets = [pod for o, pod in df.pod_specs(objs) if selects(match, (o["spec"]["template"].get("metadata") or {}).get("labels") or {})]
            ports = {p.get("name") for pod in targets for c in pod.get("containers", []) for p in c.get("ports", [])}
            endpoints = m["spec"].get("podMetricsEndpoints", [])
        if not targets:
            errors.append(f"{where}: its selector {match} matches nothing rendered here")
        for e in endpoints:
            if e.get("port") not in ports:
                errors.append(f"{where}: port {e.get('port')!r} is not a named port of what it selects ({sorted(p for p in ports if p)})")
            secret = ((e.get("authorization") or {}).get("credentials") or {}).get("name")
            if secret and ("Secret", secret) not in names and secret not in EXTERNAL_SECRETS:
                errors.append(f"{where}: reads Secret {secret!r}, which nothing creates")
    return errors


# --- compose -----------------------------------------------------------------------------

def compose_env(root):
    return df.read_env_file(os.path.join(root, "deploy/env.example"))


def compose_variants():
    """The compose file alone, and with each override file: (label, overrides)."""
    return [(df.COMPOSE_FILE, ())] + [(f"{df.COMPOSE_FILE} + {o}", (o,)) for o in df.COMPOSE_OVERRIDES]


def check_compose_schema(root, tools):
    files = [os.path.join(root, f) for f in (df.COMPOSE_FILE, *df.COMPOSE_OVERRIDES)]
    r = run([tools.tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *files])
    return [] if r.returncode == 0 else [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]


def check_compose_policy(root, tools):
    errors = []
    for label, overrides in compose_variants():
        try:
            c = df.compose(root, compose_env(root), overrides)
        except df.InterpolationError as e:
            errors.append(f"{label} with deploy/env.example: {e}")
            continue
        errors += [f"{label}: {e}" if overrides else e for e in compose_policy(c)]
    return errors


def compose_mounted(service, path):
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in (df._volume_target(v) for v in service.get("volumes", []) or []))


def compose_tls(services):
    """With LTH_TLS_CERT on the coordinator: its files mounted, a healthcheck that speaks TLS (the
    image's asks http://), workers dialing https:// with a mounted LTH_TLS_CA. Without: no https://."""
    errors = []
    coord = services.get("coordinator", {})
    env = df.compose_environment(coord)
    tls = "LTH_TLS_CERT" in env
    for var in ("LTH_TLS_CERT", "LTH_TLS_KEY", "LTH_TLS_CLIENT_CA", "LTH_TLS_CA"):
        if var in env and not compose_mounted(coord, env[var]):
            errors.append(f"service coordinator: {var}={env[var]} is not inside any of its volumes")
    if tls:
        test = (coord.get("healthcheck") or {}).get("test") or []
        if not any(str(t).startswith("https://") for t in test):
            errors.append("service coordinator: serves TLS but its healthcheck does not ask https:// (the image's HEALTHCHECK asks http://127.0.0.1:50051)")
    for name, svc in services.items():
        if not name.startswith("worker"):
            continue
        wenv = df.compose_environment(svc)
        cmd = svc.get("command") or []
        url = cmd[cmd.index("--coordinator") + 1] if "--coordinator" in cmd else wenv.get("LTH_COORDINATOR", "")
        if tls and not url.startswith("https://"):
            errors.append(f"service {name}: dials {url or 'the default URL'} in plaintext, but the coordinator serves TLS: use https:// and LTH_TLS_CA")
        if not tls and url.startswith("https://"):
            errors.append(f"service {name}: dials {url}, but the coordinator serves no TLS")
        if tls and not compose_mounted(svc, wenv.get("LTH_TLS_CA", "/nonexistent")):
            errors.append(f"service {name}: LTH_TLS_CA {wenv.get('LTH_TLS_CA')!r} is not set to a file inside its volumes")
    return errors


def compose_policy(c):
    errors = []
    services = c.get("services", {})
    errors += compose_tls(services)
    for name, s in services.items():
        for p in s.get("ports", []) or []:
            spec = p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p.get('published', '')}:{p.get('target')}"
            if not str(spec).startswith("127.0.0.1:"):
                errors.append(f"service {name}: port {spec!r} must be published on 127.0.0.1 only")
        if name != "minio-init" and s.get("restart") not in ("unless-stopped", "always", "on-failure"):
            errors.append(f"service {name}: needs a restart policy")
        for dep, cond in (s.get("depends_on") or {}).items() if isinstance(s.get("depends_on"), dict) else []:
            if (cond or {}).get("condition") not in ("service_healthy", "service_completed_successfully"):
                errors.append(f"service {name}: depends_on {dep} must wait for service_healthy / completed")
        if name.startswith("worker"):
            grace = float(df.compose_environment(s).get("LTH_SHUTDOWN_GRACE_SECONDS", 60))
            stop = s.get("stop_grace_period", "10s")
            seconds = float(re.sub(r"[^0-9.]", "", str(stop)) or 10) * (60 if str(stop).endswith("m") else 1)
            if seconds < grace + 20:
                errors.append(f"service {name}: stop_grace_period {stop} must exceed LTH_SHUTDOWN_GRACE_SECONDS {grace:g} + 20 s")
            if not any(str(v).split(":")[1:2] == ["/data"] for v in s.get("volumes", [])):
                errors.append(f"service {name}: needs the dataset volume at /data")
    coord_env = df.compose_environment(services.get("coordinator", {}))
    if str(coord_env.get("LTH_INSECURE", "")).lower() in ("true", "1", "yes"):
        errors.append("service coordinator: LTH_INSECURE is set: give it LTH_AUTH_TOKENS instead of running open")
    if "LTH_AUTH_TOKENS" not in coord_env and "LTH_AUTH_FILE" not in coord_env:
        errors.append("service coordinator: no LTH_AUTH_TOKENS or LTH_AUTH_FILE")
    for name, svc in services.items():
        if name.startswith("worker") and not {"LTH_TOKEN", "LTH_TOKEN_FILE"} & set(df.compose_environment(svc)):
            errors.append(f"service {name}: no LTH_TOKEN or LTH_TOKEN_FILE (a worker token)")
    if "ports" in services.get("postgres", {}):
        errors.append("service postgres: must not be published on the host")
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    for want in ("cpu", "gpu"):
        if want not in profiles:
            errors.append(f"no `{want}` worker profile")
    return errors


# --- Dockerfiles -------------------------------------------------------------------------

def dockerignore(root):
    path = os.path.join(root, ".dockerignore")
    return [l.strip().strip("/") for l in open(path)] if os.path.exists(path) else []


def check_hadolint(root, tools):
    files = sorted(os.path.join(root, "deploy/docker", f) for f in os.listdir(os.path.join(root, "deploy/docker")) if f.endswith(".Dockerfile"))
    r = run([tools.tool("hadolint"), "--no-color", "--failure-threshold", "info"] + files)
    return [] if r.returncode == 0 else [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]


def check_dockerfile_refs(root, tools):
    """COPY sources exist and survive .dockerignore; stages named by --from exist; files named in
    RUN lines exist; every final stage runs as a non-root user."""
    errors, ignored = [], dockerignore(root)
    for f in sorted(os.listdir(os.path.join(root, "deploy/docker"))):
        if not f.endswith(".Dockerfile"):
            continue
        rel = f"deploy/docker/{f}"
        stages = df.parse_dockerfile(os.path.join(root, rel))
        names = {s.name for s in stages}
        for s in stages:
            for keyword, rest, line in s.instructions:
                where = f"{rel}:{line}"
                words = [w for w in rest.split() if not w.startswith("--")]
                from_stage = re.search(r"--from=(\S+)", rest)
                if keyword in ("COPY", "ADD"):
                    if from_stage:
                        if from_stage.group(1) not in names:
                            errors.append(f"{where}: COPY --from={from_stage.group(1)}: no such stage")
                        continue
                    for src in words[:-1]:
                        if src == ".":
                            continue
                        if not os.path.exists(os.path.join(root, src)):
                            errors.append(f"{where}: COPY source {src} does not exist")
                        elif any(src == i or src.startswith(i + "/") for i in ignored):
                            errors.append(f"{where}: COPY source {src} is excluded by .dockerignore")
                if keyword == "RUN":
                    for ref in re.findall(r"(?<![\w/])((?:scripts|deploy)/[\w./-]+)", rest):
                        if not os.path.exists(os.path.join(root, ref)):
                            errors.append(f"{where}: RUN names {ref}, which does not exist")
            if s.entrypoint and (s.user in (None, "0", "root") or (s.user or "").startswith("0:")):
                errors.append(f"{rel} stage {s.name}: runs as root (add USER)")
    return errors


def check_torch_pins(root, tools):
    """The worker image's torch and CUDA pins agree with scripts/fetch-libtorch.sh, with the CUDA
    base image, and (when the wheel is in the download cache) with the torch wheel's own pins."""
    errors = []
    pins = {}
    toolkit = None
    for line in open(os.path.join(root, "deploy/docker/torch-cu130.txt")):
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
        m = re.match(r"^#\s*cuda-toolkit\[[^\]]*\]==(\S+)", line)
        if m:
            toolkit = m.group(1)
    fetch = open(os.path.join(root, "scripts/fetch-libtorch.sh")).read()
    for var, pkg in (("TORCH_VERSION", "torch"), ("CUDART_VERSION", "nvidia-cuda-runtime"), ("CUPTI_VERSION", "nvidia-cuda-cupti")):
        want = re.search(rf"^{var}=(\S+)", fetch, re.M).group(1)
        if pins.get(pkg) != want:
            errors.append(f"deploy/docker/torch-cu130.txt: {pkg}=={pins.get(pkg)} but scripts/fetch-libtorch.sh {var}={want}")
    worker = df.parse_dockerfile(os.path.join(root, "deploy/docker/worker.Dockerfile"))
    cuda_base = next(s.base for s in worker if s.name == "worker")
    m = re.search(r"nvidia/cuda:(\d+\.\d+)\.\d+-", cuda_base)
    if not m or not toolkit or not toolkit.startswith(m.group(1) + "."):
        errors.append(f"worker image base {cuda_base} does not match the wheel's CUDA toolkit {toolkit}")
    cache = os.environ.get("LTH_WHEEL_CACHE") or os.path.expanduser("~/.cache/lth/wheels")
    wheels = sorted(f for f in (os.listdir(cache) if os.path.isdir(cache) else []) if f.startswith(f"torch-{pins.get('torch')}-"))
    if wheels:
        with zipfile.ZipFile(os.path.join(cache, wheels[-1])) as z:
            meta = z.read(f"torch-{pins['torch']}.dist-info/METADATA").decode()
        for name, version in re.findall(r"^Requires-Dist: ((?:nvidia|cuda-toolkit)[\w-]*)(?:\[[^\]]*\])?==([\w.]+)", meta, re.M):
            have = toolkit if name == "cuda-toolkit" else pins.get(name.lower())
            if have != version:
                errors.append(f"torch {pins['torch']} pins {name}=={version}; deploy/docker/torch-cu130.txt has {have}")
    return errors


# --- shell -------------------------------------------------------------------------------

def shell_files(root):
    import glob
    return sorted(f for pattern in SHELL_SCRIPTS for f in glob.glob(os.path.join(root, pattern)))


def check_shellcheck(root, tools):
    errors = []
    r = run(["shellcheck", "-s", "bash", "-f", "gcc"] + shell_files(root))
    if r.returncode != 0:
        errors += [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    # The Slurm task runs as `bash -c '...'`: a string to the file's shellcheck, so check it alone.
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write("#!/usr/bin/env bash\n" + df.slurm_task_script(root) + "\n")
        f.flush()
        r = run(["shellcheck", "-s", "bash", "-f", "gcc", f.name])
        if r.returncode != 0:
            errors += ["deploy/slurm/lth-worker.sbatch (srun task): " + l.split(":", 1)[-1] for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    return errors


# --- flag drift --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def help_of(bin_dir, program, subcommands):
    r = run([os.path.join(bin_dir, program), *subcommands, "--help"])
    if r.returncode != 0:
        raise RuntimeError(f"{program} {' '.join(subcommands)} --help failed: {r.stderr.strip()}")
    text = r.stdout
    flags = {}
    for m in re.finditer(r"^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?: <([^>]+)>)?", text, re.M):
        flags[m.group(1)] = m.group(2) is not None
    commands = set()
    section = re.search(r"^Commands:\n(.*?)(?:\n\S|\Z)", text, re.S | re.M)
    if section:
        commands = {l.split()[0] for l in section.group(1).splitlines() if l.strip()}
    env = set(re.findall(r"\[env: (\w+)=", text))
    # Variables read outside clap, listed in the help's "Environment" section.
    section = re.search(r"^Environment[^\n]*:\n((?:[ \t]+\S[^\n]*\n?)+)", text, re.M)
    if section:
        env |= set(re.findall(r"^\s+(LTH_[A-Z0-9_]+)\s", section.group(1), re.M))
    return flags, commands, env


def drift(bin_dir, argv, env_names, where):
    """Errors for flags, subcommands and LTH_* variables that the program's --help does not know."""
    program = os.path.basename(argv[0])
    if program not in df.PROGRAMS:
        return []
    errors, subs, i = [], (), 1
    flags, commands, env = help_of(bin_dir, program, subs)
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0]
            if name not in flags:
                errors.append(f"{where}: `{program} {' '.join(subs)}` has no flag --{name}".replace("  ", " "))
            elif flags[name] and "=" not in token:
                i += 1
        elif commands and not subs or (commands and token in commands):
            if token not in commands:
                errors.append(f"{where}: `{program}` has no subcommand {token!r}")
                return errors
            subs = subs + (token,)
            flags, commands, env = help_of(bin_dir, program, subs)
        i += 1
    for name in env_names:
        if name.startswith("LTH_") and name not in env:
            errors.append(f"{where}: {name} is not a variable of `{program} {' '.join(subs)}` (see its --help)")
    return errors


def invocations(root, tools):
    """(argv, env names, where) of every lth command the deploy files run."""
    out = []
    for key in df.IMAGES:
        st = df.stage(root, key)
        argv = (st.entrypoint or []) + (st.cmd or [])
        out.append((argv, list(st.env), f"{df.IMAGES[key][0]} stage {st.name}"))
        if st.healthcheck:
            out.append((st.healthcheck, [], f"{df.IMAGES[key][0]} stage {st.name} HEALTHCHECK"))
    for label, overrides in compose_variants():
        c = df.compose(root, compose_env(root), overrides)
        for name, s in c["services"].items():
            if df.compose_image_key(s) is None:
                continue
            argv, st = df.compose_argv(root, s)
            out.append((argv, list(st.env) + list(df.compose_environment(s)), f"{label} service {name}"))
            test = (s.get("healthcheck") or {}).get("test") or []
            if test[:1] == ["CMD"]:
                out.append((test[1:], [], f"{label} service {name} healthcheck"))
    rendered, _ = render_all(root, tools)
    for k, text in rendered.items():
        objs = df.objects(text)
        for o, pod in df.pod_specs(objs):
            for ctr in pod.get("containers", []) + pod.get("initContainers", []):
                key = df.image_key(ctr.get("image", ""))
                if key is None:
                    continue
                st = df.stage(root, key)
                argv = (ctr.get("command") or st.entrypoint or []) + (ctr.get("args") if "args" in ctr else (st.cmd or []))
                where = f"{k}: {o['kind']}/{o['metadata']['name']} container {ctr['name']}"
                out.append((argv, list(st.env) + df.container_env_names(ctr, objs), where))
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    cmd = ((ctr.get(probe) or {}).get("exec") or {}).get("command")
                    if cmd:
                        out.append((cmd, [], f"{where} {probe}"))
    out.append((df.slurm_worker_argv(root), df.slurm_env_names(root), "deploy/slurm/lth-worker.sbatch"))
    return out


def check_flag_drift(root, tools):
    errors = []
    for argv, env_names, where in invocations(root, tools):
        errors += drift(tools.bin_dir, argv, env_names, where)
    return errors


CHECKS = [
    ("kubernetes: kustomize render + schemas", check_k8s_schemas),
    ("kubernetes: policy", check_k8s_policy),
    ("compose: compose-spec schema", check_compose_schema),
    ("compose: policy", check_compose_policy),
    ("dockerfiles: hadolint", check_hadolint),
    ("dockerfiles: references", check_dockerfile_refs),
    ("dockerfiles: torch and CUDA pins", check_torch_pins),
    ("shellcheck", check_shellcheck),
    ("flag drift: entrypoints vs --help", check_flag_drift),
]


# --- the checks must fail on broken copies -------------------------------------------------

def edit(root, rel, old, new):
    path = os.path.join(root, rel)
    text = open(path).read()
    if old not in text:
        raise AssertionError(f"broken-copy test: {old!r} not found in {rel}")
    open(path, "w").write(text.replace(old, new, 1))


BROKEN = [
    # (name, check, file, text, replacement, a phrase the error must contain)
    ("misspelled field in the worker DaemonSet", check_k8s_schemas, "deploy/k8s/base/worker-daemonset/daemonset.yaml",
     "terminationGracePeriodSeconds: 150", "terminationGracePeriodSecond: 150", "terminationGracePeriodSecond"),
    ("replicas as a string", check_k8s_schemas, "deploy/k8s/base/coordinator.yaml",
     "replicas: 2", "replicas: two", "'two' is not of type"),
    ("kustomization naming a missing file", check_k8s_schemas, "deploy/k8s/base/kustomization.yaml",
     "  - network-policy.yaml", "  - network-policies.yaml", "network-policies.yaml"),
    ("grace period shorter than the checkpoint time", check_k8s_policy, "deploy/k8s/base/worker-daemonset/daemonset.yaml",
     "terminationGracePeriodSeconds: 150", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds 30"),
    ("worker taking one GPU of an 8-GPU node", check_k8s_policy, "deploy/k8s/base/worker-daemonset/daemonset.yaml",
     "limits: { memory: 128Gi, nvidia.com/gpu: 8 }", "limits: { memory: 128Gi, nvidia.com/gpu: 1 }", "take all of a node's GPUs"),
    ("misspelled compose key", check_compose_schema, "deploy/docker-compose.yml",
     "    restart: unless-stopped\n\n  minio:", "    restarts: unless-stopped\n\n  minio:", "'restarts' was unexpected"),
    ("Postgres published on the host", check_compose_policy, "deploy/docker-compose.yml",
     "    volumes: [pgdata:/var/lib/postgresql/data]", "    ports: [\"5432:5432\"]\n    volumes: [pgdata:/var/lib/postgresql/data]", "5432:5432"),
    ("COPY of a missing file", check_dockerfile_refs, "deploy/docker/worker.Dockerfile",
     "COPY deploy/docker/torch-cu130.txt", "COPY deploy/docker/torch-cu129.txt", "torch-cu129.txt does not exist"),
    ("stage running as root", check_dockerfile_refs, "deploy/docker/coordinator.Dockerfile",
     "USER 10001:10001\n", "", "runs as root"),
    ("torch pin out of step with fetch-libtorch.sh", check_torch_pins, "deploy/docker/torch-cu130.txt",
     "torch==2.11.0", "torch==2.10.0", "TORCH_VERSION=2.11.0"),
    ("dev overlay without the namespace", check_k8s_policy, "deploy/k8s/overlays/dev/kustomization.yaml",
     "namespace: lth\n", "", "not 'lth'"),
    ("unquoted variable in the Slurm task", check_shellcheck, "deploy/slurm/lth-worker.sbatch",
     'mkdir -p "$LTH_CACHE_DIR"', "mkdir -p $LTH_CACHE_DIR", "SC2086"),
    ("misspelled worker flag in Kubernetes", check_flag_drift, "deploy/k8s/base/worker-daemonset/daemonset.yaml",
     'args: ["--gpus", "all",', 'args: ["--gpu", "all",', "no flag --gpu"),
    ("unknown LTH_ variable in a ConfigMap", check_flag_drift, "deploy/k8s/base/worker.env",
     "LTH_SLOTS_PER_GPU=1", "LTH_SLOT_PER_GPU=1", "LTH_SLOT_PER_GPU"),
    ("misspelled flag in the Slurm script", check_flag_drift, "deploy/slurm/lth-worker.sbatch",
     "--slots-per-gpu \"$LTH_SLOTS_PER_GPU\"", "--slots-per-gpus \"$LTH_SLOTS_PER_GPU\"", "no flag --slots-per-gpus"),
    ("misspelled flag in the compose worker", check_flag_drift, "deploy/docker-compose.yml",
     '"--cpu-slots", "1"', '"--cpu-slot", "1"', "no flag --cpu-slot"),
    ("HEALTHCHECK calling a misspelled flag", check_flag_drift, "deploy/docker/coordinator.Dockerfile",
     '"healthcheck", "--coordinator"', '"healthcheck", "--coordinater"', "no flag --coordinater"),
    ("Kubernetes coordinator opened with LTH_INSECURE", check_k8s_policy, "deploy/k8s/base/coordinator.env",
     "LTH_LOG_FORMAT=json", "LTH_LOG_FORMAT=json\nLTH_INSECURE=true", "LTH_INSECURE is set"),
    ("compose workers without a token", check_compose_policy, "deploy/docker-compose.yml",
     '      LTH_TOKEN: ${LTH_WORKER_TOKEN:?set LTH_WORKER_TOKEN in deploy/.env (see deploy/env.example)}\n    # Each',
     "    # Each", "no LTH_TOKEN or LTH_TOKEN_FILE"),
    # TLS, mutual TLS, the workers' metrics port, the Prometheus Operator's monitors.
    ("tls component keeping a plaintext grpc probe", check_k8s_policy, "deploy/k8s/components/tls/kustomization.yaml",
     "        path: /spec/template/spec/containers/0/readinessProbe\n        value: { httpGet: { path: /healthz, port: http }, periodSeconds: 5, failureThreshold: 2 }",
     "        path: /spec/template/spec/containers/0/readinessProbe/periodSeconds\n        value: 5", "readinessProbe is a grpc probe"),
    ("workers left on http:// under TLS", check_k8s_policy, "deploy/k8s/components/tls/kustomization.yaml",
     "LTH_COORDINATOR=https://lth-coordinator:50051", "LTH_COORDINATOR=http://lth-coordinator:50051", "in plaintext, but the coordinator serves TLS"),
    ("certificate path outside the mounted Secret", check_k8s_policy, "deploy/k8s/components/tls/kustomization.yaml",
     "LTH_TLS_CERT=/etc/lth/tls/tls.crt", "LTH_TLS_CERT=/etc/lth/certs/tls.crt", "is not under any volumeMount"),
    ("mutual TLS without the workers' key", check_k8s_policy, "deploy/k8s/components/mtls/kustomization.yaml",
     "      - LTH_TLS_CLIENT_KEY=/etc/lth/worker-tls/tls.key\n", "", "no LTH_TLS_CLIENT_KEY"),
    ("misspelled client-certificate variable", check_flag_drift, "deploy/k8s/components/mtls/kustomization.yaml",
     "LTH_TLS_CLIENT_CERT=", "LTH_TLS_CLIENT_CRT=", "LTH_TLS_CLIENT_CRT"),
    ("misspelled ServiceMonitor field", check_k8s_schemas, "deploy/k8s/components/service-monitor/monitors.yaml",
     "      path: /metrics\n      interval: 30s\n      authorization:", "      paths: /metrics\n      interval: 30s\n      authorization:", "paths: Extra inputs are not permitted"),
    ("PodMonitor naming a port the workers lack", check_k8s_policy, "deploy/k8s/components/service-monitor/monitors.yaml",
     "    - port: metrics", "    - port: metric", "port 'metric' is not a named port"),
    ("worker metrics port closed by the NetworkPolicy", check_k8s_policy, "deploy/k8s/base/network-policy.yaml",
     "        - { port: 9102, protocol: TCP }", "        - { port: 9103, protocol: TCP }", "no NetworkPolicy admits the metrics port 9102"),
    ("worker metrics port not declared", check_k8s_policy, "deploy/k8s/base/worker.env",
     "LTH_METRICS_LISTEN=0.0.0.0:9102", "LTH_METRICS_LISTEN=0.0.0.0:9100", "declares no containerPort 9100"),
    ("compose TLS file without the healthcheck", check_compose_policy, "deploy/docker-compose.tls.yml",
     '      test: ["CMD", "lth-coordinator", "healthcheck", "--coordinator", "https://localhost:50051"]', '      test: ["CMD", "lth-coordinator", "healthcheck"]', "does not ask https://"),
    ("compose TLS file leaving a worker on http://", check_compose_policy, "deploy/docker-compose.tls.yml",
     "  worker-gpu:\n    environment:\n      LTH_COORDINATOR: https://coordinator:50051", "  worker-gpu:\n    environment:\n      LTH_COORDINATOR: http://coordinator:50051", "service worker-gpu: dials http://coordinator:50051 in plaintext"),
    ("misspelled flag in the compose TLS healthcheck", check_flag_drift, "deploy/docker-compose.tls.yml",
     '"healthcheck", "--coordinator", "https://localhost:50051"', '"healthcheck", "--coordinator-url", "https://localhost:50051"', "no flag --coordinator-url"),
]


def copy_tree(root, dest):
    for rel in ("deploy", "scripts", "examples"):
        shutil.copytree(os.path.join(root, rel), os.path.join(dest, rel), ignore=shutil.ignore_patterns(".env", "datasets", "__pycache__"))
    for rel in (".dockerignore",):
        shutil.copy(os.path.join(root, rel), os.path.join(dest, rel))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root_default = os.path.abspath(os.path.join(HERE, "..", ".."))
    ap.add_argument("--root", default=root_default)
    ap.add_argument("--bin-dir", default=os.environ.get("LTH_BIN_DIR") or os.path.join(root_default, "target", "debug"))
    ap.add_argument("--tools", default=os.environ.get("LTH_DEPLOY_TOOLS") or os.path.expanduser("~/.cache/lth/deploy-tools"))
    args = ap.parse_args()
    tools = Tools(args.tools, os.path.abspath(args.bin_dir))
    passed = failed = 0
    for name, check in CHECKS:
        t = time.monotonic()
        errors = check(args.root, tools)
        if errors:
            failed += 1
            print(f"FAIL {name}:")
            for e in errors:
                print(f"     {e}")
        else:
            passed += 1
            print(f"ok   {name} ({time.monotonic() - t:.1f} s)")
    for name, check, rel, old, new, phrase in BROKEN:
        with tempfile.TemporaryDirectory() as tmp:
            copy_tree(args.root, tmp)
            edit(tmp, rel, old, new)
            errors = check(tmp, tools)
        hit = [e for e in errors if phrase in e]
        if hit:
            passed += 1
            print(f"ok   rejects a broken copy: {name}: {hit[0].strip()[:160]}")
        else:
            failed += 1
            print(f"FAIL accepts a broken copy: {name} (wanted an error with {phrase!r}; got {errors[:3]})")
    print(f"deploy-static: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
