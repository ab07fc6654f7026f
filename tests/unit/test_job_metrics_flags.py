"""The job's Prometheus options (no Flink, no broker): the endpoint on loopback unless --metrics-host
says otherwise, one-line errors naming the flag, and the project's reporter jar beside Flink's on the
mini cluster's class path and in the image's plugin directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from jobs import rendezvous_job as rj

REPO = Path(__file__).resolve().parents[2]
BASE = ["--policy", str(REPO / "policies" / "default.yaml"), "--bootstrap", "b:9"]
MODULE = REPO / "deps" / "metrics-prometheus"
FACTORY = "metrics.reporter.prom.factory.class"


def test_no_endpoint_unless_asked_for() -> None:
    assert not any(k.startswith("metrics.reporter.") for k in rj.parse_args(BASE).flink_overrides)


def test_the_endpoint_is_on_loopback_by_default() -> None:
    overrides = rj.parse_args([*BASE, "--metrics-port", "9250-9260"]).flink_overrides
    assert (
        overrides[FACTORY]
        == rj.PROMETHEUS_FACTORY
        != "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    )
    assert overrides[rj.PROMETHEUS_HOST_KEY] == "127.0.0.1"
    assert overrides[rj.PROMETHEUS_PORT_KEY] == "9250-9260"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::1", "::", "metrics.example.org", "localhost"])
def test_metrics_host_takes_an_address_or_a_name(host: str) -> None:
    overrides = rj.parse_args([*BASE, "--metrics-port", "9249", "--metrics-host", host]).flink_overrides
    assert overrides[rj.PROMETHEUS_HOST_KEY] == host
    assert overrides[FACTORY] == rj.PROMETHEUS_FACTORY


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-port", "9249", "--metrics-host", ""], "--metrics-host: expected an IP address or a host name, got ''"),
        (["--metrics-port", "9249", "--metrics-host", "a b"], "--metrics-host: expected an IP address or a host name, got 'a b'"),
        (["--metrics-port", "9249", "--metrics-host", "http://x"], "--metrics-host: expected an IP address or a host name, got 'http://x'"),
        (["--metrics-port", "9249", "--metrics-host=-x"], "--metrics-host: expected an IP address or a host name, got '-x'"),
        (["--metrics-host", "0.0.0.0"], "--metrics-host: needs --metrics-port (no metrics endpoint without it)"),
        (["--metrics-port", "x"], "--metrics-port: expected PORT or PORT-PORT, got 'x'"),
    ],
)  # fmt: skip
def test_a_bad_metrics_option_is_refused_in_one_line_naming_the_flag(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        rj.parse_args([*BASE, *args])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"rendezvous-job: error: {message}"


def test_the_reporter_settings_reach_flinks_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("flink-sql-connector-kafka-5.0.0-2.2.jar", rj.SINK_CONTEXT_JAR, rj.ARCHIVE_JAR):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(rj, "CONNECTOR_JARS_DIR", tmp_path)
    cfg = rj.parse_args([*BASE, "--state-dir", str(tmp_path / "st"), "--metrics-port", "9249"])
    conf = rj.flink_configuration(cfg)
    assert {k: conf[k] for k in rj.prometheus_reporter("9249")} == rj.prometheus_reporter("9249", "127.0.0.1")


def test_both_reporter_jars_go_on_the_mini_clusters_class_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rj, "CONNECTOR_JARS_DIR", tmp_path)
    monkeypatch.setenv("HADOOP_CLASSPATH", "/x.jar")
    with pytest.raises(
        SystemExit, match=r"no rendezvous-metrics-prometheus\.jar in .* run `make setup` first"
    ):
        rj.put_prometheus_reporter_on_classpath()
    assert os.environ["HADOOP_CLASSPATH"] == "/x.jar"
    (tmp_path / rj.METRICS_REPORTER_JAR).write_bytes(b"")
    rj.put_prometheus_reporter_on_classpath()
    first, flinks, ours = os.environ["HADOOP_CLASSPATH"].split(os.pathsep)
    assert first == "/x.jar"
    assert re.search(r"pyflink/plugins/metrics-prometheus/flink-metrics-prometheus-[\d.]+\.jar$", flinks)
    assert ours == str(tmp_path / rj.METRICS_REPORTER_JAR)


def test_the_factory_the_job_names_is_the_modules_and_defaults_to_the_same_host() -> None:
    """The Python defaults and the Java class agree: its name, its service entry and its default host."""
    java = MODULE / "src" / "main" / "java" / (rj.PROMETHEUS_FACTORY.replace(".", "/") + ".java")
    source = java.read_text(encoding="utf-8")
    assert f'DEFAULT_HOST = "{rj.DEFAULT_METRICS_HOST}";' in source
    assert 'ARG_HOST = "host";' in source and rj.PROMETHEUS_HOST_KEY.endswith(".host")
    services = MODULE / "src" / "main" / "resources" / "META-INF" / "services"
    entry = (services / "org.apache.flink.metrics.reporter.MetricReporterFactory").read_text(encoding="utf-8")
    assert entry.split() == [rj.PROMETHEUS_FACTORY]
    pom = (MODULE / "pom.xml").read_text(encoding="utf-8")
    assert f"<finalName>{rj.METRICS_REPORTER_JAR.removesuffix('.jar')}</finalName>" in pom
    # Compiled against the Flink the job runs on (it extends that release's reporter).
    pin = re.search(r'"apache-flink==([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pin is not None and f"<flink.version>{pin.group(1)}</flink.version>" in pom
    assert "<module>metrics-prometheus</module>" in (REPO / "deps" / "pom.xml").read_text(encoding="utf-8")
    assert "deps/metrics-prometheus/pom.xml" in (REPO / "Makefile").read_text(encoding="utf-8")


def test_the_image_puts_the_reporter_beside_flinks_in_its_plugin_directory() -> None:
    """The reporter extends Flink's and reads its package-private registry: one class loader, so the same
    plugin directory."""
    text = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert (
        f"COPY --from=jars /src/build/jars/flink/{rj.METRICS_REPORTER_JAR} $FLINK_HOME/plugins/metrics-prometheus/"
        in text
    )
