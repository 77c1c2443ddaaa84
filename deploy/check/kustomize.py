"""Render a Kustomize folder with the real Kustomize, from package registries only.

The Kustomize API (sigs.k8s.io/kustomize/api) comes compiled as a C library in the PyPI wheel
`pykustomize` (tools.sh unpacks it; the wheel's own bindings want Python >= 3.14, the library does
not). Where that library is missing (not x86_64) and `kubectl` is on PATH, `kubectl kustomize`
renders instead; both are the same Kustomize.

    python kustomize.py DIR            # the rendered YAML on stdout, Kustomize's error on failure
"""

import ctypes
import json
import os
import shutil
import subprocess
import sys

_lib = None


def _library(tools_dir):
    global _lib
    if _lib is None:
        path = os.path.join(tools_dir, "pykustomize-0.1.4", "libpykustomize.so")
        if not os.path.exists(path):
            return None
        lib = ctypes.CDLL(path)
        lib.pykustomize_build.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.pykustomize_build.restype = ctypes.c_int
        lib.pykustomize_last_error.restype = ctypes.c_void_p
        lib.pykustomize_free.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


class KustomizeError(Exception):
    pass


def render(directory, tools_dir=None):
    """Rendered YAML of the kustomization in `directory` (Kustomize's default: load restrictor
    root-only, no plugins, no Helm)."""
    tools_dir = tools_dir or os.environ.get("LTH_DEPLOY_TOOLS") or os.path.expanduser("~/.cache/lth/deploy-tools")
    lib = _library(tools_dir)
    if lib is None:
        if shutil.which("kubectl"):
            out = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True)
            if out.returncode != 0:
                raise KustomizeError(out.stderr.strip())
            return out.stdout
        raise KustomizeError(f"no Kustomize: run deploy/check/tools.sh (expects {tools_dir}/pykustomize-0.1.4) or put kubectl on PATH")
    options = json.dumps({
        "load_restrictions": 0, "reorder": "unspecified", "add_managedby_label": False,
        "enable_plugins": False, "enable_helm": False, "helm_command": "",
    }).encode()
    result = ctypes.c_void_p()
    rc = lib.pykustomize_build(os.path.abspath(directory).encode(), options, ctypes.byref(result))
    if rc != 0:
        err = lib.pykustomize_last_error()
        message = ctypes.string_at(err).decode() if err else f"pykustomize_build returned {rc}"
        if err:
            lib.pykustomize_free(err)
        raise KustomizeError(message)
    text = ctypes.string_at(result.value).decode()
    lib.pykustomize_free(result)
    return text


if __name__ == "__main__":
    try:
        sys.stdout.write(render(sys.argv[1]))
    except KustomizeError as e:
        sys.exit(f"kustomize {sys.argv[1]}: {e}")
