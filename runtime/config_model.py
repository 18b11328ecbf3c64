"""The settings tree of fsac-run: every section a validated pydantic model.

These classes *are* the documentation of what may be written in a config file: each field's
description is what `fsac-run --config-schema` prints, and the schema in
`runtime/schema/config.schema.json` is generated from them (tests check it is current).
The sinks' sections come from the sink registry (runtime/sinks/__init__.py): a new sink
adds its own model there, not here. Loading, overrides and cross-setting checks live in
runtime/config.py.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import Field, PrivateAttr, create_model, field_validator

from .gige_settings import GigeSettings
from .opcua_settings import OpcuaSettings
from .settings_base import Settings, Size, TextOrIndex
from .sinks import SINKS

SourceKind = Literal["auto", "folder", "watch", "video", "camera", "rtsp", "http", "gstreamer", "gige"]
SOURCE_KINDS = SourceKind.__args__
SourceMode = Literal["every-frame", "latest-frame", "trigger"]
SOURCE_MODES = SourceMode.__args__
Backend = Literal["auto", "onnxruntime", "tensorrt", "openvino"]
BACKENDS = Backend.__args__
JournalWhenFull = Literal["auto", "block", "drop-oldest"]
JOURNAL_WHEN_FULL = JournalWhenFull.__args__
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS = LogLevel.__args__


class OpenVinoConfig(Settings):
    precision: Literal["auto", "f32", "bf16", "int8", "int8_bf16"] = Field(
        "auto", description="auto: int8 for a QDQ file, else bf16 where the device has it, else f32; "
                            "int8_bf16: a QDQ file with its float parts at bf16 (faster on AMX, further from fp32)")
    device: str = Field("CPU", description="OpenVINO device: CPU, GPU (GPU.N), or AUTO")
    streams: Union[int, str] = Field(
        "auto", description="OpenVINO streams. auto: throughput for a folder or video source in every-frame mode "
                            "(frames queue up, so frames/s is what counts), else one stream (a lone frame on all "
                            "the threads: triggers, cameras, watch folders); throughput: OpenVINO's throughput hint, "
                            "its own number of streams for this machine; 0 or 1: one stream, the latency hint; "
                            "N > 1: N streams. With more than one, each batch is split into one part per stream, "
                            "run at once (more frames/s), and a lone frame runs on one stream's threads (slower)")
    cache_dir: str = Field("", description="OpenVINO compiled-model cache folder (empty: compile at every start)")
    path_settings = ("cache_dir",)

    @field_validator("streams", mode="before")
    @classmethod
    def _streams(cls, v: Any) -> Any:
        if v in ("auto", "throughput") or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 64):
            return v
        raise ValueError(f"must be auto, throughput or a number of streams from 0 to 64, got {v!r}")


class ModelConfig(Settings):
    path: str = Field("", description="sealed fsac model file (.onnx) or TensorRT engine (.engine/.plan + .json "
                      "sidecar)")
    backend: Backend = Field("auto", description="auto: tensorrt for .engine/.plan/.trt, else onnxruntime; with "
                             "model.calibration_images set, auto times the backends and precisions on this machine "
                             "and serves the fastest whose logits agree with fp32 (fsac.runtime.policy); openvino: "
                             "Intel's runtime (model.openvino)")
    openvino: OpenVinoConfig = Field(default_factory=OpenVinoConfig)
    int8_path: Union[str, List[str]] = Field("", description="INT8 file quantized from model.path (`fsac quantize`) "
                                             "that backend: auto may serve instead, if it is faster and its logits "
                                             "agree with fp32; a list: several INT8 layouts of the same model (e.g. "
                                             "the default file and one from `fsac quantize --engine nncf`), each a "
                                             "candidate on every INT8 runtime, so each machine gets its fastest")
    calibration_images: str = Field("", description="folder of normal images for backend: auto to measure each "
                                    "candidate's agreement with fp32 on (empty: auto is onnxruntime fp32)")
    max_backend_memory: Size = Field(0, ge=0, description="backend auto: a candidate whose backend holds more "
                                     "resident memory than this (measured at start, e.g. 800MB) does not qualify; "
                                     "0: no limit. `fsac-run --check` on a 2-core AVX2 EPYC, ViT-B-16-plus-240, "
                                     "batch 4: ONNX Runtime fp32 +611 MiB, OpenVINO f32 +1497, ONNX Runtime INT8 "
                                     "+358, OpenVINO int8 +596")
    providers: List[str] = Field(default_factory=list, description="onnxruntime execution providers in order "
                                 "(tensorrt, cuda, cpu or full names); empty: TensorRT -> CUDA -> CPU, whichever "
                                 "this onnxruntime offers")
    logit_threshold: Optional[float] = Field(None, description="override the calibrated threshold, in logit units "
                                             "(defective iff logit >= logit_threshold)")
    threshold: Optional[float] = Field(None, description="override the calibrated threshold in score units "
                                       "(0 < t < 1); converted to a logit threshold. Prefer model.logit_threshold")
    batch_size: int = Field(4, ge=1, le=256, description="most frames scored in one call when frames queue up")
    threads: int = Field(0, ge=0, le=256, description="onnxruntime intra-op / OpenVINO inference threads (0: the "
                         "runtime decides)")
    spin_wait: bool = Field(False, description="let onnxruntime's CPU threads busy-wait between operators: a "
                            "little faster on cores nothing else uses, much slower when decoding shares the CPU")
    cpu_prepack: bool = Field(True, description="let onnxruntime's CPU provider pre-pack the MatMul weights "
                              "(it frees the unpacked ones). Measured on a 2-core AVX2 EPYC, full "
                              "ViT-B-16-plus-240: INT8 3.9 -> 4.4 frames/s, fsac-run peak RSS 315 -> 389 MB; fp32 "
                              "2.7 -> 3.1 frames/s, 647 -> 700 MB; both within model size + 300 MB. false: the "
                              "least memory")
    image_size: Optional[int] = Field(None, ge=16, le=4096, description="if set, refuse a model whose input size "
                                      "differs (guards against deploying the wrong export)")
    warm_up: bool = Field(True, description="at load, run every batch size the scorer can form (1 .. batch_size) "
                          "once on a blank frame, so that no frame on the line pays for a runtime's first-call "
                          "work (OpenVINO compiles kernels per input shape: measured 157 ms for the first batch "
                          "of 1 of ViT-B-16-plus-240 bf16 instead of 49)")
    path_settings = ("path", "calibration_images", "int8_path")
    # Not a setting: whether the configured source's frames wait in a queue (a folder or video
    # in every-frame mode: full batches, frames/s counts), resolved from the source at load
    # (runtime/config.py, source_queues); backend auto times its candidates at that batch.
    _frames_queue: bool = PrivateAttr(False)


class SourceConfig(Settings):
    kind: SourceKind = Field("auto", description="auto: decided from uri")
    uri: TextOrIndex = Field("", description="folder, video file, camera index or /dev/videoN, rtsp/http URL, or "
                             "GStreamer pipeline ending in appsink")
    mode: SourceMode = Field("every-frame", description="every-frame: no frame skipped, the reader waits "
                             "(back-pressure); latest-frame: stale frames are dropped and counted; trigger: one "
                             "frame per inspection request (section trigger, runtime/trigger.py)")
    queue_size: int = Field(8, ge=1, le=10000, description="frames read but not yet scored")
    decode_workers: int = Field(2, ge=1, le=64, description="threads decoding and resizing frames beside inference")
    reconnect_min_s: float = Field(0.5, ge=0.01, description="first wait before reopening a lost stream")
    reconnect_max_s: float = Field(30.0, ge=0.01, description="longest wait between reconnect attempts")
    read_timeout_s: float = Field(10.0, ge=0.1, description="stream open/read timeout where OpenCV supports it")
    settle_s: float = Field(0.5, ge=0.0, description="watch: a file is complete once its size and mtime have not "
                            "changed for this long and it decodes")
    poll_s: float = Field(0.2, ge=0.01, description="watch: folder scan interval")
    give_up_s: float = Field(30.0, ge=0.0, description="watch: a file that still does not decode this long after "
                             "it appeared is reported as an error record")
    existing: Literal["process", "skip", "all"] = Field(
        "process", description="watch: files already in the folder at start. process: score those no earlier run "
        "scored (with processed: leave, earlier runs' files are remembered in <journal.dir>/watch-scored.jsonl); "
        "skip: only files that appear later; all: every file, even ones scored before (e.g. with a new model)")
    processed: Literal["leave", "move"] = Field("leave", description="watch: leave scored files in place or move "
                                                "them to done_dir")
    done_dir: str = Field("", description="watch: where processed files go (default <folder>/done)")
    channel_order: Literal["bgr", "rgb"] = Field("bgr", description="channel order of decoded video frames "
                                                 "(OpenCV delivers bgr)")
    frame_size: Optional[List[int]] = Field(None, description="[width, height] every frame must have; other frames "
                                            "become error records (null: any size)")
    max_frame_pixels: int = Field(40_000_000, ge=1, description="an encoded frame whose header says width x height "
                                  "exceeds this becomes an error record before it is decoded (40 MP = 120 MB "
                                  "decoded; decode_workers x that must fit the box's memory)")
    gige: Optional[GigeSettings] = Field(None, description="kind gige (GigE Vision / GenICam camera through "
                                         "Aravis; uri: camera id or auto): pixel_format, exposure_us, gain_db, "
                                         "acquisition, ... (runtime/gige_settings.py)")
    path_settings = ("done_dir",)
    maybe_path_settings = ("uri",)


# sinks.<name> for every registered sink, in registry order; jsonl is always there (its
# `path` switches it on), the others are absent until configured.
SinksConfig = create_model(
    "SinksConfig", __base__=Settings, __module__=__name__,
    **{s.name: ((s.settings, Field(default_factory=s.settings)) if s.always_present
                else (Optional[s.settings], Field(None, description=s.description))) for s in SINKS})


class JournalConfig(Settings):
    dir: str = Field("", description="folder of the durable result journal and the sinks' cursors (empty: "
                     "<folder of sinks.jsonl.path>/.fsac-journal); one daemon per folder")
    max_bytes: Size = Field(256 * 1024 * 1024, ge=16 * 1024, description="journal bound: records kept for sinks "
                            "that have not delivered them yet")
    max_records: int = Field(1_000_000, ge=16, description="journal bound, in records")
    when_full: JournalWhenFull = Field("auto", description="at the bound: block (stop consuming input: file, "
                                       "folder, watch, video) or drop-oldest (live streams: oldest undelivered "
                                       "records deleted and counted); auto: drop-oldest for live sources "
                                       "(camera/rtsp/http/gstreamer/gige), block otherwise")
    sync: bool = Field(True, description="fdatasync the journal before an input is acknowledged (survives power "
                       "loss); false: the OS page cache only (survives a daemon crash or kill)")
    commit_interval_s: float = Field(0.5, ge=0.0, le=10.0, description="group commit: the journal is fdatasynced "
                                     "(and inputs acknowledged: a watched file moved to done/) at most this often, "
                                     "so one fsync covers every record of the interval; each fsync rewrites at "
                                     "least a 4 KB page, so at a few frames a second a short interval costs a "
                                     "page per record. A trigger request commits at once, and sinks deliver "
                                     "without waiting for it (they read appended records), so this delays only "
                                     "acknowledgements; on power loss at most this much unacknowledged work is "
                                     "scored again")
    cursor_interval_s: float = Field(5.0, ge=0.01, le=3600.0, description="how often the sinks' cursors are saved; "
                                     "a later save only means records are delivered again after a crash")
    path_settings = ("dir",)


class HttpConfig(Settings):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="bind address; keep the loopback default unless a firewall guards it")
    port: int = Field(9108, ge=0, le=65535, description="0: any free port (logged)")


class LiveConfig(Settings):
    """The operator page at http://<http.host>:<http.port>/ (runtime/webui.py)."""

    enabled: bool = Field(True, description="serve the live view at / (needs http.enabled; off http.host loopback, "
                          "the token in FSAC_RUN_TOKEN is required)")
    feedback_dir: str = Field("", description="where frames marked False alarm / Confirmed defect go (empty: "
                              "<folder of journal.dir>/fsac-feedback)")
    feedback_max_files: int = Field(1000, ge=1, description="marked frames kept per label; the oldest deleted first")
    calibration_images: List[str] = Field(default_factory=list, description="the original calibration images "
                                          "(files or folders) on this box, for re-calibration from the page")
    alpha: Optional[float] = Field(None, gt=0.0, lt=1.0, description="target false-alarm rate of a re-calibration (default: the "
                                   "model's own calibration alpha, else 0.01)")
    frames_in_memory: int = Field(16, ge=1, le=1000, description="recent frames whose pixels the page can show or "
                                  "mark (plus the last 12 defective ones)")
    max_frame_bytes: Size = Field(64 * 1024 * 1024, ge=1024 * 1024, description="bound on the memory those frames "
                                  "take")
    path_settings = ("feedback_dir", "calibration_images")


class TriggerConfig(Settings):
    deadline_s: float = Field(1.0, ge=0.001, le=3600.0, description="source.mode=trigger: a request not answered "
                              "within this long gets verdict error (the line treats it as reject)")
    max_pending: int = Field(64, ge=1, le=100000, description="requests waiting for a frame; one more is answered "
                             "with an error at once")
    token_env: str = Field("FSAC_TRIGGER_TOKEN", description="NAME of the environment variable holding the bearer "
                           "token POST /v1/inspect requires when http.host is not loopback")
    max_image_bytes: Size = Field(32 * 1024 * 1024, ge=1024, description="largest image sent with a request")
    remember: int = Field(10000, ge=1, le=1_000_000, description="request ids remembered to answer a duplicated request once")
    mqtt_command_topic: Optional[str] = Field(None, description="MQTT topic (under sinks.mqtt.topic_prefix) taking "
                                              "inspection requests as JSON; results go to the results topic; "
                                              "null: MQTT requests off")


class StationConfig(Settings):
    site: str = Field("", description="plant or site name, in every record and the default MQTT topics")
    line: str = Field("", description="production line name")
    station: str = Field("", description="station name; with site and line set, sinks.mqtt.topic_prefix defaults "
                         "to fsac/<site>/<line>/<station>")


class RecipeConfig(Settings):
    path: str = Field(description="the recipe's sealed model file")
    logit_threshold: Optional[float] = Field(None, description="override its calibrated threshold, in logit units")
    threshold: Optional[float] = Field(None, description="override it in score units (prefer logit_threshold)")
    path_settings = ("path",)


class DaemonConfig(Settings):
    shutdown_timeout_s: float = Field(10.0, ge=0.5, description="SIGTERM: drain and flush within this long")
    drain_timeout_s: float = Field(60.0, ge=0.0, description="end of a folder or video source: wait this long for "
                                   "the durable sinks to deliver everything, then report what is pending")


class LoggingConfig(Settings):
    level: LogLevel = "info"


class RuntimeConfig(Settings):
    """fsac-run's whole configuration (one YAML or TOML file plus command-line overrides)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    sinks: SinksConfig = Field(default_factory=SinksConfig)  # type: ignore[valid-type]
    journal: JournalConfig = Field(default_factory=JournalConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    station: StationConfig = Field(default_factory=StationConfig)
    recipes: Optional[Dict[str, RecipeConfig]] = Field(None, description="more sealed models by recipe name; "
                                                       "model.path is recipe default (runtime/recipes.py)")
    opcua: Optional[OpcuaSettings] = Field(None, description="OPC UA server exposing the station "
                                           "(runtime/opcua.py)")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
