"""The container recipes, read with real parsers (no Docker engine is needed): the Dockerfile with
dockerfile-parse, the Singularity recipe with spython. Versions in them must agree with setup.cfg."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from spython.main.parse.parsers import SingularityParser

from bids_phydiff import __version__
from bids_phydiff import errors

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
SINGULARITY = REPO / "Singularity"
ENTRYPOINT = "/opt/bids_phydiff/run.py"
OCI_LABELS = ("version", "revision", "source", "title", "licenses")


# ---------------------------------------------------------------------------------------------------------
# helpers


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _requirements(text: str) -> dict[str, Requirement]:
    reqs = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            reqs[canonicalize_name(req.name)] = req
    return reqs


def _install_requires() -> dict[str, Requirement]:
    return _requirements(_setup_cfg()["options"]["install_requires"])


def _extra(name: str) -> dict[str, Requirement]:
    return _requirements(_setup_cfg()["options.extras_require"][name])


def _exact(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", req
    return spec.version


def _lock() -> dict[str, str]:
    return {name: _exact(req) for name, req in _requirements((REPO / "requirements.lock").read_text()).items()}


def _parser(**build_args) -> DockerfileParser:
    parser = DockerfileParser(str(DOCKERFILE), build_args=build_args or None)
    return parser


def _stages(parser: DockerfileParser) -> dict:
    """Stage name -> (base image as written, [instructions]); '' holds the global ARGs."""
    stages: dict = {"": (None, [])}
    current = ""
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            stages[current] = (words[0], [])
        else:
            stages[current][1].append(item)
    return stages


def _global_args() -> dict[str, str]:
    out = {}
    for item in _stages(_parser())[""][1]:
        if item["instruction"] == "ARG":
            name, _, value = item["value"].partition("=")
            out[name] = value.strip('"')
    return out


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def _stage_chain(variant: str) -> list[str]:
    """The stages the final image is made of for ``variant``, last stage first."""
    stages = _stages(_parser())
    values = dict(_global_args(), VARIANT=variant)
    chain = [list(stages)[-1]]
    while True:
        base = _expand(stages[chain[-1]][0], values)
        if base not in stages:
            chain.append(base)
            return chain
        chain.append(base)


def _runs(stage: str) -> list[str]:
    return [i["value"] for i in _stages(_parser())[stage][1] if i["instruction"] == "RUN"]


def _pins(command: str) -> dict[str, str]:
    """``name==version`` pins in a shell command (quotes stripped)."""
    found = {}
    for name, version in re.findall(r"(?<![\w/.-])([A-Za-z][\w.-]*)==([\w.+${}-]+)", command.replace('"', " ")):
        found[canonicalize_name(name)] = version
    return found


def _singularity_sections() -> dict[str, str]:
    sections: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in SINGULARITY.read_text().splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            current = match.group(1).lower()
            sections[current] = []
        else:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


# ---------------------------------------------------------------------------------------------------------
# Dockerfile


def test_entrypoint_is_exec_form_run_py_installed_executable():
    parser = _parser()
    entry = [i for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]["value"]) == [ENTRYPOINT]
    assert parser.structure[-1]["instruction"] == "ENTRYPOINT"
    runtime = list(_stages(parser))[-1]
    installs = [r for r in _runs(runtime) if re.search(r"install -m 0?755 \S*run\.py " + re.escape(ENTRYPOINT), r)]
    assert installs, "run.py is not installed executable at the ENTRYPOINT path"
    assert (REPO / "run.py").read_text().startswith("#!/usr/bin/env python3\n")


def test_runs_as_a_non_root_user_with_a_home_any_uid_can_write():
    stages = _stages(_parser())
    runtime = stages[list(stages)[-1]][1]
    users = [i["value"].strip() for i in runtime if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    user = users[-1].split(":")[0]
    runs = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    assert re.search(rf"useradd\b[^&]*\b{user}\b", runs), f"no useradd for {user}"
    envs = _parser().envs
    home = envs["HOME"]
    assert re.search(rf"chmod (0?777|a\+rwX?) {re.escape(home)}\b", runs) or f"chmod 0777 {home}" in runs
    assert envs["MPLCONFIGDIR"].startswith(home)
    # the ENTRYPOINT comes after the last USER: nothing runs as root at run time
    kinds = [i["instruction"] for i in runtime]
    assert max(i for i, k in enumerate(kinds) if k == "USER") < kinds.index("ENTRYPOINT")


def test_environment_of_the_image():
    envs = _parser().envs
    assert envs["TEMPLATEFLOW_AUTOUPDATE"] == "0"
    assert envs["TEMPLATEFLOW_HOME"] == "/opt/templateflow"
    assert envs["OMP_NUM_THREADS"] == "1"
    assert envs["MKL_NUM_THREADS"] == "1"
    assert envs["MPLCONFIGDIR"]
    assert envs["PATH"].startswith("/opt/venv/bin:")


def test_oci_labels_from_build_args_agree_with_the_package():
    cfg = _setup_cfg()
    labels = _parser(VCS_REF="abc1234", SOURCE_URL="https://example.org/bids_phydiff").labels
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing or empty"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == "abc1234"
    assert labels["org.opencontainers.image.source"] == "https://example.org/bids_phydiff"
    assert labels["org.opencontainers.image.title"] == cfg["metadata"]["name"]
    assert labels["org.opencontainers.image.licenses"] == cfg["metadata"]["license"]


def test_torch_natten_and_python_versions_agree_with_setup_cfg():
    args = _global_args()
    assert args["TORCH_VERSION"] == _exact(_install_requires()["torch"])
    assert args["NATTEN_VERSION"] == _exact(_extra("natten")["natten"])
    python = args["PYTHON_VERSION"]
    assert python in ("3.11", "3.12")
    assert _setup_cfg()["options"]["python_requires"]
    from packaging.specifiers import SpecifierSet

    assert f"{python}.0" in SpecifierSet(_setup_cfg()["options"]["python_requires"])


def test_every_pin_in_the_dockerfile_agrees_with_setup_cfg_and_the_lock():
    known = {name: _exact(req) for name, req in {**_install_requires(), **_extra("natten"), **_extra("test")}.items()
             if str(req.specifier).startswith("==")}
    lock = _lock()
    values = _global_args()
    pins = {}
    for stage in _stages(_parser()):
        for command in _runs(stage):
            pins.update(_pins(_expand(command, values)))
    assert {"torch", "natten"} <= set(pins), pins
    for name, version in pins.items():
        expected = known.get(name) or lock.get(name)
        assert expected is not None, f"{name}=={version} is pinned in the Dockerfile but not in setup.cfg or the lock"
        assert version == expected, f"{name}: Dockerfile {version}, setup.cfg/lock {expected}"


def test_the_lock_the_image_installs_covers_install_requires():
    stages = _stages(_parser())
    # the build context is mounted at /tmp/bids_phydiff/src for the install step (no COPY layer)
    installs = [r for r in _runs(list(stages)[-1]) if "--mount=type=bind,target=/tmp/bids_phydiff/src" in r]
    # the package with what it needs, each at the lock's version (-c: the lock's test-only packages stay out)
    assert installs and re.search(
        r"pip install [^&]*-c /tmp/bids_phydiff/src/requirements\.lock /tmp/bids_phydiff/src(?![/\w])", installs[0])

    lock = _lock()
    for name, req in _install_requires().items():
        if name == "torch":  # installed on its own, from the index of the wanted CUDA build
            continue
        assert name in lock, f"{name} (install_requires) is not in requirements.lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"lock {name}=={lock[name]} vs {req}"
    for name in ("torch", "natten"):
        assert name not in lock, f"{name} must not be in the lock: it is built per CUDA version"


def test_package_installed_as_a_regular_install_constrained_by_the_lock():
    runs = _runs(list(_stages(_parser()))[-1])
    package = [r for r in runs if re.search(r"pip install [^&]*-c \S+requirements\.lock /tmp/bids_phydiff/src(?![/\w])", r)]
    assert package and not re.search(r"pip install [^&]*(-e|--editable) /tmp/bids_phydiff/src", package[0])
    step = package[0]
    assert "pip check" in step and "-r /tmp/bids_phydiff/src/requirements.lock" not in step
    # torch (from its own index or the wheel folder) is in place before the package asks for it
    assert step.index('"torch==${TORCH_VERSION}"') < step.index("-c /tmp/bids_phydiff/src/requirements.lock")
    # the source is a read-write bind mount of the build context: it leaves no layer in the image
    assert "--mount=type=bind,target=/tmp/bids_phydiff/src,rw" in step
    copies = [i["value"] for i in _parser().structure if i["instruction"] in ("COPY", "ADD")]
    assert not [c for c in copies if c.split()[0] == "."], copies


def test_gpu_variant_builds_natten_in_a_devel_stage_for_the_runtime_cuda():
    chain = _stage_chain("gpu")
    args = _global_args()
    stages = _stages(_parser())
    runtime_base = _expand(stages[chain[-2]][0], args)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", runtime_base), runtime_base

    wheels = _expand(stages["natten-wheels"][0], dict(args, VARIANT="gpu"))
    devel_base = _expand(stages[wheels][0], args)
    assert devel_base == runtime_base.replace("-runtime-", "-devel-"), (devel_base, runtime_base)
    build = " ".join(_runs(wheels))
    assert "--no-build-isolation" in build and "natten==${NATTEN_VERSION}" in build
    assert "NATTEN_CUDA_ARCH=" in build
    # the built wheel is loaded in that stage (the CUDA stub for the driver) and must hold libnatten
    assert "LD_LIBRARY_PATH=/tmp/cuda-stub" in build and "assert natten.HAS_LIBNATTEN" in build
    # torch in the builder comes from the same index as in the runtime stage
    index_args = {i["value"].split("=", 1)[0]: i["value"].split("=", 1)[1]
                  for name in (wheels, chain[0]) for i in stages[name][1]
                  if i["instruction"] == "ARG" and i["value"].startswith("TORCH_INDEX_URL=")}
    assert index_args["TORCH_INDEX_URL"].endswith("/${TORCH_CUDA}")
    assert re.fullmatch(r"cu\d{3}", args["TORCH_CUDA"])
    assert args["TORCH_CUDA"] == "cu" + "".join(args["CUDA_VERSION"].split(".")[:2])
    final = " ".join(_runs(chain[0]))
    # the wheels are mounted from the natten stage for the install step only
    assert "--mount=type=bind,from=natten-wheels,source=/wheels,target=/tmp/wheels" in final
    assert "import torch, natten" in final


def test_cpu_variant_uses_no_cuda_image_and_the_cpu_torch_wheel():
    chain = _stage_chain("cpu")
    stages = _stages(_parser())
    args = _global_args()
    bases = [_expand(stages[name][0], args) for name in chain if name in stages]
    assert not any("nvidia" in b for b in bases), bases
    # the CPU base is a build argument (a local Debian image for offline builds), Ubuntu by default
    assert stages["base-cpu"][0] == "${CPU_BASE_IMAGE}" and chain[-1] == "ubuntu:${UBUNTU_VERSION}"
    assert re.fullmatch(r"ubuntu:\$\{UBUNTU_VERSION\}", args["CPU_BASE_IMAGE"])
    assert _parser(VARIANT="cpu").baseimage == "base-cpu"
    final = " ".join(_runs(chain[0]))
    assert "https://download.pytorch.org/whl/cpu" in " ".join(
        i["value"] for i in stages[chain[0]][1] if i["instruction"] == "ARG")
    assert 'if [ "${VARIANT}" = cpu ]; then index="${TORCH_CPU_INDEX_URL}"' in final


def test_build_time_smoke_test_runs_as_the_app_user():
    stages = _stages(_parser())
    runtime = stages[list(stages)[-1]][1]
    kinds = [i["instruction"] for i in runtime]
    last_user = max(i for i, k in enumerate(kinds) if k == "USER")
    smoke = [i["value"] for i in runtime[last_user:] if i["instruction"] == "RUN"]
    assert smoke, "no RUN after USER"
    text = " ".join(smoke)
    assert "bids_phydiff --version" in text and "fetch_templates.py --check" in text
    assert "import torch, natten" in text
    assert "find_spec('natten.libnatten') is not None" in text  # the GPU image ships the fused kernels


def test_templates_are_fetched_at_build_time_into_templateflow_home():
    runs = " ".join(_runs(list(_stages(_parser()))[-1]))
    assert "python /opt/bids_phydiff/fetch_templates.py" in runs
    assert "install -m 0644 /tmp/bids_phydiff/src/docker/fetch_templates.py /opt/bids_phydiff/fetch_templates.py" in runs
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import fetch_templates
    finally:
        sys.path.pop(0)
    assert set(fetch_templates.TEMPLATES["MNI152NLin6Asym"]) == {1, 2}
    assert "MNI305" in fetch_templates.TEMPLATES
    assert ("T1w", None) in fetch_templates.FILES and ("mask", "brain") in fetch_templates.FILES


def test_fetch_templates_check_loads_every_template_offline():
    home = Path(__import__("os").environ.get("BIDS_PHYDIFF_SHARED", REPO.parent / "shared")) / "templateflow"
    if not (home / "tpl-MNI305").is_dir():
        pytest.skip(f"no filled TemplateFlow home at {home}")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.skip("unshare -rn (user + network namespace) is not available here")
    env = {"PATH": "/usr/bin:/bin", "TEMPLATEFLOW_HOME": str(home), "TEMPLATEFLOW_AUTOUPDATE": "0",
           "HOME": "/nonexistent"}
    script = str(REPO / "docker" / "fetch_templates.py")
    for mode in ([], ["--check"]):
        proc = subprocess.run(["unshare", "-rn", sys.executable, script, *mode], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("offline:") == 3


def test_the_shipped_training_configs_are_in_the_image():
    """``--train-config /opt/bids_phydiff/configs/ddpm.yml`` (README) must exist in the image."""
    runs = " ".join(i["value"] for i in _parser().structure if i["instruction"] == "RUN")
    assert "cp -r /tmp/bids_phydiff/src/configs /opt/bids_phydiff/configs" in runs
    assert sorted(p.name for p in (REPO / "configs").glob("*.yml"))  # what it copies


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                close = pattern.index("]", i)
                out, i = out + pattern[i:close + 1], close + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out

    def ignored(path: str) -> bool:
        parts = path.split("/")
        result = False
        for pattern in patterns:  # the last matching pattern decides (Docker's rule)
            negate = pattern.startswith("!")
            rx = regex(pattern.lstrip("!").rstrip("/"))
            # a pattern that matches a folder matches everything below it
            if any(re.fullmatch(rx, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
                result = not negate
        return result

    needed = ["setup.cfg", "pyproject.toml", "README.md", "requirements.lock", "run.py",
              "docker/fetch_templates.py", "bids_phydiff/__init__.py", "bids_phydiff/cli/run.py",
              "configs/phydiff.yml", "configs/ddpm.yml", "docker/with_pip_ca.sh", "docker/wheels/x.whl",
              "docker/templateflow/tpl-MNI305/tpl-MNI305_T1w.nii.gz"]
    for path in needed:
        assert not ignored(path), f"{path} is needed by the build but .dockerignore drops it"
    for path in [".venv/bin/python", ".git/config", "work/x", "demo/bids/x",
                 "bids_phydiff/cli/__pycache__/run.cpython-312.pyc", "bids_phydiff.egg-info/PKG-INFO"]:
        assert ignored(path), f"{path} would be sent to the Docker daemon"
    copied = [i["value"].split()[0] for i in _parser().structure
              if i["instruction"] == "COPY" and not i["value"].startswith("--from")]
    for source in copied:
        if source != ".":
            assert not ignored(source), source


def _instructions(stage: str) -> list[dict]:
    return _stages(_parser())[stage][1]


def test_buildkit_is_stated_and_needed_without_a_registry_frontend():
    """The legacy builder runs every stage (a CPU build would compile natten): the recipe needs BuildKit, says
    so, and stops the legacy builder at parse time through its RUN --mount steps. No `# syntax=` line: it
    pulls the Dockerfile frontend from a registry, which an offline build cannot."""
    text = DOCKERFILE.read_text()
    header = text.split("\nARG ", 1)[0]
    assert "BuildKit" in header and "DOCKER_BUILDKIT=1" in header
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    assert re.search(r"^RUN --mount=", text, re.M)
    assert "BuildKit" in (REPO / "docs" / "hpc.md").read_text()


def test_the_legacy_builder_stops_at_the_first_stage_before_pulling_anything():
    """The legacy builder runs the stages in order: the first one is ``FROM scratch`` with a RUN --mount, so it
    stops there (measured: "the --mount option requires BuildKit", no pull). Nothing depends on that stage, so
    BuildKit never builds it."""
    stages = _stages(_parser())
    first = list(stages)[1]
    base, instructions = stages[first]
    assert base == "scratch"
    runs = [i for i in instructions if i["instruction"] != "COMMENT"]
    assert [i["instruction"] for i in runs] == ["RUN"] and runs[0]["value"].startswith("--mount=")
    for name, (stage_base, items) in stages.items():
        assert stage_base != first, name
        for item in items:
            assert f"from={first}" not in item["value"] and f"--from={first}" not in item["value"], item


def test_what_no_user_runs_is_left_out_of_the_image():
    """Image size (goal: CPU image under 2 GB): no test-only packages (the lock is a constraint), no torch
    C++ tests, test binaries or headers, no package test suites, no pip, no empty build mount points."""
    stage = list(_stages(_parser()))[-1]
    step = next(r for r in _runs(stage) if "pip check" in r)
    for needle in ('"${site}/torch/test"', '"${site}/torch/include"', "! -name torch_shm_manager",
                   'find "${site}" -type d -name tests -prune -exec rm -rf {} +', "pip uninstall -y -q pip"):
        assert needle in step, needle
    # torch is imported and the dependencies checked on the pruned tree (import torch needs torch_shm_manager)
    assert step.index('rm -rf "${site}/torch/test"') < step.index("import sys, torch") < step.index("pip check")
    cleanup = [r for r in _runs(stage) if r.startswith("rm -rf /tmp/bids_phydiff /tmp/wheels /tmp/docker")]
    assert cleanup, "the build's mount points are left in the image"
    test_only = set(_extra("test")) - set(_install_requires())
    assert "scikit-image" in test_only and "pytest" in test_only


def test_pip_ca_bundle_is_a_secret_that_never_reaches_the_image():
    text = DOCKERFILE.read_text()
    assert "--secret id=pip_ca" in text  # documented in the header
    secret_runs = [r for stage in _stages(_parser()) for r in _runs(stage) if "type=secret,id=pip_ca" in r]
    assert secret_runs
    for run in secret_runs:  # every step that uses it goes through the wrapper that deletes the bundle
        assert "with_pip_ca.sh" in run
    for item in _parser().structure:  # never copied, never in an ENV or ARG of any stage
        if item["instruction"] in ("COPY", "ADD", "ENV", "ARG", "LABEL"):
            assert not re.search(r"pip_ca|PIP_CERT|REQUESTS_CA_BUNDLE|/run/secrets", item["value"]), item
    wrapper = (REPO / "docker" / "with_pip_ca.sh").read_text()
    assert "/run/secrets/pip_ca" in wrapper and "trap 'rm -f" in wrapper and 'PIP_CERT="${bundle}"' in wrapper


def test_extra_ca_bundle_wrapper_runs_the_command_with_and_without_the_secret(tmp_path):
    wrapper = REPO / "docker" / "with_pip_ca.sh"
    proc = subprocess.run(["sh", str(wrapper), "sh", "-c", 'echo "cert=${PIP_CERT:-none}"; exit 3'],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 3 and proc.stdout.strip() == "cert=none"  # no secret: unchanged, exit code kept


def test_templateflow_prefill_from_the_build_context_is_copied_then_checked():
    runs = [r for r in _runs(list(_stages(_parser()))[-1]) if "fetch_templates.py" in r and "templateflow" in r]
    assert runs, "no template step"
    step = runs[0]
    assert "--mount=type=bind,source=docker,target=/tmp/docker" in step
    assert 'cp -r "${tpl}" /opt/templateflow/' in step and "/tmp/docker/templateflow/tpl-*" in step
    # copied first, then fetch_templates.py checks every file and downloads only what is missing
    assert step.index("cp -r") < step.index("python /opt/bids_phydiff/fetch_templates.py")
    folder = REPO / "docker" / "templateflow"
    assert (folder / "README.md").is_file()
    assert "*" in (folder / ".gitignore").read_text().split()  # a filled home is never committed


def test_torch_can_come_from_a_local_wheel_folder_and_other_indexes_are_build_args():
    args = {i["value"].split("=", 1)[0] for i in _parser().structure if i["instruction"] == "ARG"}
    assert {"TORCH_INDEX_URL", "TORCH_CPU_INDEX_URL", "PIP_INDEX_URL", "CPU_BASE_IMAGE"} <= args
    step = next(r for r in _runs(list(_stages(_parser()))[-1]) if "torch==${TORCH_VERSION}" in r)
    assert "PIP_FIND_LINKS=/tmp/bids_phydiff/src/docker/wheels" in step
    assert 'else from="--no-index --no-deps"; fi' in step
    assert "pip uninstall -y -q pip" in step  # no installer left in the image
    assert "*" in (REPO / "docker" / "wheels" / ".gitignore").read_text().split()


def test_smoke_script_runs_every_level_locked_down():
    script = (REPO / "docker" / "smoke.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and (REPO / "docker" / "smoke.sh").stat().st_mode & 0o111
    for needle in ("--read-only", "--network none", "-u \"$RUNAS\"", "/data:ro", "DOCKER_BUILDKIT=0",
                   "docker diff" if "docker diff" in script else '"$DOCKER" diff', "--help", "--version",
                   "bids_phydiff.phantom", "--resolution 4", " group ", "--model /out/models/model-tiny",
                   "real-bids", "--participant-label xa30", "validate('/out')", "-perm -0044"):
        assert needle in script, needle
    assert subprocess.run(["bash", "-n", str(REPO / "docker" / "smoke.sh")]).returncode == 0


# ---------------------------------------------------------------------------------------------------------
# Singularity


def test_singularity_recipe_builds_from_this_version_and_passes_arguments():
    recipe = SingularityParser(str(SINGULARITY)).recipe
    layer = list(recipe.values())[-1]
    header = _singularity_sections()["header"]
    bootstrap = re.search(r"^Bootstrap:\s*(\S+)", header, re.M).group(1)
    assert bootstrap in ("docker", "docker-daemon", "docker-archive")
    assert layer.fromHeader == f"bids_phydiff:{__version__}"
    assert re.fullmatch(r'exec \S+ "\$@"', layer.cmd), layer.cmd
    assert layer.cmd.split()[1] == ENTRYPOINT
    labels = dict(line.split(None, 1) for line in layer.labels)
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == _setup_cfg()["metadata"]["license"]
    assert "BIDS_PHYDIFF_CONTAINER=singularity" in layer.environ
    sections = _singularity_sections()
    assert "--nv" in sections["help"] and "--cleanenv" in sections["help"]
    assert ENTRYPOINT in sections["test"]


def test_singularity_environment_keeps_user_set_variables():
    environment = _singularity_sections()["environment"]
    # only the image's own matplotlib folder is dropped (read-only in a SIF); nothing else is forced
    assigned = re.findall(r"^\s*export\s+(\w+)=", environment, re.M)
    assert set(assigned) <= {"BIDS_PHYDIFF_CONTAINER"}, assigned
    assert re.search(r"^\s*unset MPLCONFIGDIR\s*$", environment, re.M)


# ---------------------------------------------------------------------------------------------------------
# docs/hpc.md


def test_hpc_doc_lists_every_exit_code_and_the_recipes():
    text = (REPO / "docs" / "hpc.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", text, re.M))
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert codes <= {int(c) for c in rows}, sorted(codes - {int(c) for c in rows})
    for needle in ("--nv --cleanenv", "-B /data:/data", "--array=1-", "SLURM_ARRAY_TASK_ID",
                   "participants.tsv", "$TMPDIR", "$SLURM_JOB_ID", "torchrun --standalone --nproc-per-node",
                   "nvidia-smi", "--device cuda", "TEMPLATEFLOW_HOME"):
        assert needle in text or needle.replace("$TMPDIR", "${TMPDIR") in text, needle


def test_hpc_doc_records_the_measured_smoke_run_and_what_was_checked():
    """The engine-based checks live in docker/smoke.sh; their measured results, how to get an engine and a base
    image, the XTRACT decision and the Apptainer check are in docs/hpc.md."""
    text = (REPO / "docs" / "hpc.md").read_text()
    for needle in ("docker/smoke.sh", "apt-get install -y docker.io debootstrap", "debootstrap --variant=minbase",
                   "docker import - local/debian:bookworm", "--secret id=pip_ca", "TORCH_CPU_INDEX_URL=",
                   "docker/wheels/", "docker/templateflow/", "--xtract-atlas", "apt-cache policy apptainer",
                   "--containall --cleanenv", "docker history"):
        assert needle in text, needle
    # the measured image size is stated in bytes and stays under the 2 GB goal
    sizes = [int(m.replace(",", "")) for m in re.findall(r"\*\*([\d,]+) bytes", text)]
    assert sizes and all(size < 2_000_000_000 for size in sizes), sizes
