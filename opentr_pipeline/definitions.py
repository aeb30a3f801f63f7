"""The code location: assets, checks, jobs, sensors and resources, built from the settings."""

from __future__ import annotations

import dagster as dg

from opentr_pipeline.defs.assets.media import media_file
from opentr_pipeline.defs.assets.profiles import voice_profiles
from opentr_pipeline.defs.assets.reports import peak_within_worker_limit, throughput_report
from opentr_pipeline.defs.assets.search import every_file_is_findable, search_index
from opentr_pipeline.defs.assets.speakers import every_file_has_its_speakers, hints_of, hints_version, speakers
from opentr_pipeline.defs.assets.subtitles import subtitles
from opentr_pipeline.defs.assets.transcripts import settings_version, transcript
from opentr_pipeline.defs.jobs import report_job, transcribe_job
from opentr_pipeline.defs.resources import GpuExecutor, MediaStore
from opentr_pipeline.defs.sensors import build_rerun_sensor, build_upload_sensor, report_freshness_sensor
from opentr_pipeline.engine.devices import describe_plan
from opentr_pipeline.engine.transcription import model_location
from opentr_pipeline.settings import Settings

def build_defs(settings: Settings) -> dg.Definitions:
    gpu = GpuExecutor.from_settings(settings)
    if settings.engine.resident:  # the workers plan their own devices; this process loads no model
        plan = f"resident workers on queue '{settings.engine.queue}' (OPENTR_BROKER_URL)"
    else:
        plan = describe_plan(gpu.plan())  # validates the device variables at start-up
    decoding = settings.decoding
    batch = f"{decoding.batch_size}" + (" (1 on a CPU worker of one thread, else 8)" if decoding.batch_size == "auto" else "")
    plan += (f"; model {decoding.whisper_model} ({model_location(decoding.whisper_model)}), compute type "
             f"{decoding.whisper_compute_type}, batch {batch}, beam {decoding.beam_size}")
    # Dagster takes a resource's description from its __doc__: the UI's resource page shows the plan.
    object.__setattr__(gpu, "__doc__", f"{GpuExecutor.__doc__} Device plan: {plan}.")
    version = settings_version(gpu)
    # A new model or decoding setting makes existing transcripts stale in the UI.
    versioned_transcript = transcript.map_asset_specs(
        lambda spec: spec.replace_attributes(code_version=f"transcribe-1-{version}")
    )
    # So do other speaker hints for the speakers (decided again from the kept voice prints).
    versioned_speakers = speakers.map_asset_specs(
        lambda spec: spec.replace_attributes(code_version=f"speakers-1-{hints_version(hints_of(gpu), decoding.diarization)}")
    )
    return dg.Definitions(
        assets=[media_file, versioned_transcript, versioned_speakers, subtitles, search_index, voice_profiles,
                throughput_report],
        asset_checks=[peak_within_worker_limit, every_file_has_its_speakers, every_file_is_findable],
        jobs=[transcribe_job, report_job],
        sensors=[build_upload_sensor(settings), build_rerun_sensor(settings),
                 report_freshness_sensor],
        resources={
            "gpu": gpu,
            "media": MediaStore.from_settings(settings),
        },
        metadata={"device_plan": plan},
        # One process per run: a step subprocess costs seconds of start-up and re-imports
        # torch and faster-whisper; the transcript step fans out over threads itself. Pools and
        # the per-device leases hold the limit the same way.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(Settings.from_env())
