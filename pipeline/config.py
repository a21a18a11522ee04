"""The run configuration: a typed schema with defaults, validated before any work starts.

A config is YAML. Every key has a default (``default.yaml`` next to this file holds the
shipped default run), unknown keys are errors, and ``--set a.b=c`` overrides one key from
the command line (the value is parsed as YAML, so ``--set teacher.train.epochs=10`` is an int).
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError, os_error_text
from pipeline.sources import SourceConfig

DEFAULT_CONFIG = "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class NoiseConfig(_Strict):
    """Annotation error injected into train and validation labels (test labels stay clean)."""

    sigma: float = Field(0.1, ge=0, description="std of Gaussian noise added to every noisy label")
    outlier_fraction: float = Field(
        0.2, ge=0, le=1, description="fraction p of train/val labels replaced by outliers"
    )
    outlier_low: float = Field(-5.0, description="outlier labels are drawn uniformly from [outlier_low, outlier_high]")
    outlier_high: float = Field(5.0, description="upper end of the outlier range")
    label_noise: float = Field(
        0.0, ge=0, lt=1, description="classification: fraction of train/val labels flipped to a wrong class"
    )
    label_noise_type: Literal["symmetric", "pair"] = Field(
        "symmetric", description="classification: flip to a uniformly drawn other class, or class c -> c+1 (mod m)"
    )

    @model_validator(mode="after")
    def _range(self) -> NoiseConfig:
        if self.outlier_high <= self.outlier_low:
            raise ValueError(
                f"outlier_high ({self.outlier_high}) must be greater than outlier_low ({self.outlier_low})"
            )
        return self


class PoseConfig(_Strict):
    """data.name=pose: real photographs from scikit-image, rolled and scaled by known amounts."""

    source: Literal["faces", "photos", "both"] = Field(
        "faces", description="LFW face crops (grey), scikit-image's colour photographs, or both")
    channels: Literal[1, 3] = Field(1, description="1: grey; 3: RGB (grey sources replicated)")
    max_roll: float = Field(30.0, gt=0, le=90, description="roll angles (deg) drawn from [-max_roll, max_roll]")
    max_log2_scale: float = Field(0.5, gt=0, le=1, description="log2 scales drawn from [-x, x]")
    max_shift: float = Field(0.0, ge=0, le=8, description="shifts (px) drawn from [-x, x]; 0: no shift outputs")


class DataConfig(_Strict):
    name: Literal["sinusoid", "digits_rotation", "digits", "pose", "source"] = Field(
        "sinusoid",
        description="data set (registry: pipeline.data.DATASETS); digits is a classification task; "
        "pose: roll and scale of real photographs (several outputs; noise in units of each output's std); "
        "source: your own data, described under data.source (docs/DATA.md)",
    )
    pose: PoseConfig = Field(default_factory=PoseConfig)
    source: SourceConfig | None = Field(
        None, description="data.name=source: kind csv | npz | image_folder | mpiigaze and its keys (docs/DATA.md)"
    )
    n_train: int = Field(2000, ge=16, description="training samples")
    n_val: int = Field(500, ge=8, description="validation samples (noisy labels, used for early stopping)")
    n_test: int = Field(1000, ge=8, description="test samples (always clean labels)")
    x_min: float = Field(-3.141592653589793, description="inputs are drawn uniformly from [x_min, x_max]")
    x_max: float = Field(3.141592653589793, description="upper end of the input interval")
    amplitude: float = Field(1.0, gt=0, description="A in y = A*sin(f*x + phase)")
    frequency: float = Field(2.0, gt=0, description="f in y = A*sin(f*x + phase)")
    phase: float = Field(0.0, description="phase in y = A*sin(f*x + phase)")
    image_size: int = Field(16, ge=8, le=224, description="digits_rotation / digits: 8x8 digits are resized to this "
                            "size; pose: the rendered crop size (>= 32)")
    max_angle: float = Field(
        45.0, gt=0, le=180, description="digits_rotation: rotation angles (degrees) drawn from [-max_angle, max_angle]"
    )
    noise: NoiseConfig = Field(default_factory=NoiseConfig)

    @model_validator(mode="after")
    def _interval(self) -> DataConfig:
        if self.x_max <= self.x_min:
            raise ValueError(f"x_max ({self.x_max}) must be greater than x_min ({self.x_min})")
        if self.name == "source" and self.source is None:
            raise ValueError("data.name is 'source' but data.source is missing; e.g. "
                             "source: {kind: csv, path: data.csv, labels: [y]} (see docs/DATA.md)")
        if self.name != "source" and self.source is not None:
            raise ValueError(f"data.source is given but data.name is {self.name!r}; set data.name: source")
        if self.name == "pose" and self.image_size < 32:
            raise ValueError(f"data.image_size is {self.image_size}; the pose data set needs >= 32")
        if self.name == "source" and "noise" not in self.model_fields_set:
            # your own labels are used as they are unless you ask for injected annotation error
            self.noise = NoiseConfig(sigma=0.0, outlier_fraction=0.0)
        return self


class TrainConfig(_Strict):
    epochs: int = Field(300, ge=1, description="maximum epochs")
    batch_size: int = Field(128, ge=1, description="mini-batch size")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    patience: int = Field(30, ge=1, description="early stopping: epochs without validation improvement")


class SRLConfig(_Strict):
    """Self-regulated learning (Mishra & Sundaram): only samples the model gets wrong, or right with
    confidence below tau, take part in the backward pass; a sample's significance is how often it did."""

    enabled: bool = Field(
        False, description="teacher: train with SRL (otherwise participation is only counted, for significance)"
    )
    tau: float = Field(0.9, gt=0, le=1, description="classification: confidence p_y below which a right sample takes part")
    tolerance: float = Field(
        1.0, gt=0, description="regression: |error| above tolerance x MAD-scale of the residuals takes part"
    )


BackboneName = Literal["mlp", "cnn", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
                       "mobilenet_v3_large", "efficientnet_b0"]


class TeacherConfig(_Strict):
    backbone: BackboneName = Field("mlp", description="backbone family (registry: models.BACKBONES)")
    width_mult: float = Field(1.0, gt=0, le=4, description="width multiplier of resnet / mobilenet / efficientnet")
    hidden: list[int] = Field([512, 512, 512], description="widths of the fully connected layers (after the pooled "
                              "features for resnet / mobilenet / efficientnet; may be empty for those)")
    channels: list[int] = Field([32, 64, 128], description="conv channels per block (cnn backbone only)")
    activation: Literal["relu", "gelu", "tanh", "silu"] = Field("relu", description="hidden activation")
    loss: Literal["mse", "l1", "huber"] = Field(
        "mse", description="regression loss on the (noisy) labels (classification always uses cross-entropy)"
    )
    srl: SRLConfig = Field(default_factory=SRLConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    onnx: str | None = Field(
        None, description="a teacher you already have, as ONNX (any framework): its outputs are the soft targets, "
        "no teacher is trained"
    )
    onnx_input: Literal["raw", "normalized"] = Field(
        "raw", description="teacher.onnx expects raw inputs (as in your data) or pocketkd's standardised ones"
    )
    checkpoint: str | None = Field(
        None, description="a PyTorch state_dict of the architecture above (backbone, hidden, channels), loaded "
        "with weights_only=True; no teacher is trained"
    )

    @model_validator(mode="after")
    def _widths(self) -> TeacherConfig:
        if any(w < 1 for w in self.hidden + self.channels):
            raise ValueError(f"hidden widths and channels must be >= 1, got {self.hidden} / {self.channels}")
        if self.backbone in ("mlp", "cnn") and not self.hidden:
            raise ValueError(f"hidden must hold at least one width for the {self.backbone} backbone")
        if self.onnx and self.checkpoint:
            raise ValueError("give either teacher.onnx or teacher.checkpoint, not both")
        for key in ("onnx", "checkpoint"):
            path = getattr(self, key)
            if path and not Path(path).expanduser().is_file():
                raise ValueError(f"teacher.{key} file {path} does not exist")
        return self


class StudentConfig(_Strict):
    backbone: BackboneName = Field("mlp", description="backbone family of the shared student backbone")
    width_mult: float = Field(1.0, gt=0, le=4, description="width multiplier of resnet / mobilenet / efficientnet")
    hidden: list[int] = Field([64, 64], description="widths of the shared fully connected layers (may be empty for "
                              "resnet / mobilenet / efficientnet: their pooled features feed the heads)")
    channels: list[int] = Field([8, 16], description="conv channels per block (cnn backbone only)")
    activation: Literal["relu", "gelu", "tanh", "silu"] = Field("relu", description="hidden activation")
    keep_head: Literal["label", "teacher"] = Field(
        "label", description="head kept by drop_teacher_head() for deployment"
    )
    max_param_ratio: float = Field(
        0.05, gt=0, le=1, description="the student may have at most this fraction of the teacher's parameters"
    )

    @model_validator(mode="after")
    def _widths(self) -> StudentConfig:
        if any(w < 1 for w in self.hidden + self.channels):
            raise ValueError(f"hidden widths and channels must be >= 1, got {self.hidden} / {self.channels}")
        if self.backbone in ("mlp", "cnn") and not self.hidden:
            raise ValueError(f"hidden must hold at least one width for the {self.backbone} backbone")
        return self


class KDConfig(_Strict):
    alpha: float = Field(
        0.5, ge=0, le=1,
        description="kd: alpha*MSE(s, y) + (1-alpha)*MSE(s, y_teacher); classification: alpha*CE + (1-alpha)*T^2*KL",
    )
    temperature: float = Field(4.0, gt=0, description="classification: softmax temperature T of Hinton KD")


class LRConfig(_Strict):
    eta: float = Field(0.5, gt=0, lt=1, description="lr: beta = eta / (p_max - p_y + 1) mixes the teacher into the label")
    scale_k: float = Field(
        2.0, gt=0, description="regression lr: target weight exp(-|y_t - y| / (scale_k x MAD-scale of residuals))"
    )


class DSConfig(_Strict):
    fraction: float = Field(
        0.6, gt=0, le=1, description="ds: fraction of training samples distilled (most reliable teacher); the rest: labels only"
    )


class KAConfig(_Strict):
    alpha: float = Field(
        0.0, ge=0, le=1,
        description="ka: weight of cross-entropy on the labels beside the adjusted-teacher KD; 0 = the paper's rule "
        "(the student learns from the adjusted teacher alone, which already ranks the label first)",
    )
    payoff: float = Field(
        0.0, ge=0, description="ka_gambler: gambler payoff o in (1, m); 0 = automatic, (1 + m) / 2"
    )
    min_label_prob: float = Field(
        0.0, ge=0, lt=1,
        description="ka, ka_gambler: shift only where the teacher's (tempered) probability of the label is at least "
        "this; below it the label is more likely wrong than the teacher and the teacher is kept (0 = always shift, "
        "as in the paper)",
    )
    pretrain_epochs: int = Field(
        0, ge=0,
        description="ka_gambler: first epochs trained without the abstain option (cross-entropy over the m classes), "
        "as the deep gamblers reference code does, so the abstain output does not take over early",
    )


class SignificanceConfig(_Strict):
    min_weight: float = Field(
        0.2, ge=0, lt=1, description="significance / hybrid: samples below this normalised significance are left out"
    )


class RegulatedConfig(_Strict):
    tau: float = Field(0.9, gt=0, le=1, description="regulated / hybrid: the student skips samples it gets right with p_y >= tau")


class TORConfig(_Strict):
    mode: Literal["reject", "substitute"] = Field(
        "reject", description="outliers: leave out of the label loss (reject) or use y_teacher as target (substitute)"
    )
    delta_rule: Literal["absolute", "mad"] = Field(
        "mad", description="outlier threshold: a fixed delta, or k x MAD-scale of the residuals y - y_teacher"
    )
    delta: float = Field(0.5, gt=0, description="threshold for delta_rule=absolute")
    k: float = Field(2.0, gt=0, description="multiplier for delta_rule=mad (delta = k * 1.4826 * MAD)")


class TORMTConfig(_Strict):
    label_weight: float = Field(1.0, ge=0, description="weight of the TOR loss on the label head")
    teacher_weight: float = Field(0.5, ge=0, description="weight of MSE(teacher head, y_teacher)")


class DistillConfig(_Strict):
    method: str = Field("tor_mt", description="method of the deployed student (registry: pipeline.methods.METHODS)")
    baselines: list[str] = Field(
        ["scratch", "kd"], description="extra students trained on the same data for comparison in the report"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    tor: TORConfig = Field(default_factory=TORConfig)
    tor_mt: TORMTConfig = Field(default_factory=TORMTConfig)
    lr: LRConfig = Field(default_factory=LRConfig)
    ds: DSConfig = Field(default_factory=DSConfig)
    ka: KAConfig = Field(default_factory=KAConfig)
    significance: SignificanceConfig = Field(default_factory=SignificanceConfig)
    regulated: RegulatedConfig = Field(default_factory=RegulatedConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        _check_method(name)
        return name

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names: list[str]) -> list[str]:
        for name in names:
            _check_method(name)
        return names


def _check_method(name: str) -> None:
    from pipeline.methods import METHODS

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")


class Int8Config(_Strict):
    calibration_samples: int = Field(2048, ge=1, description="training inputs fed to the int8 calibration (at most)")
    calibration_seed: int = Field(
        0, description="seed of the calibration sample: a random sample of the training split, stratified over the "
        "label range for regression (never the first rows in file order)")
    calibrate_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="ONNX Runtime calibration method"
    )
    per_channel: bool = Field(True, description="per-channel weight scales")
    float_first_layer: bool = Field(
        True, description="ONNX static int8: keep the first layer in float so the raw input is not quantized"
    )
    prepare: bool = Field(
        True, description="MLP students: equalise hidden channels and round weights GPTQ-style onto the int8 grid "
        "before ONNX static / dynamic int8 and TFLite int8 conversion (fp32 function unchanged)"
    )


class QATConfig(_Strict):
    enabled: bool = Field(
        True, description="after distillation, fine-tune the student with fake int8 quantization (ORT QDQ / LiteRT "
        "int8 scheme) under the method's loss, weights snapped to the int8 grid; the export then skips "
        "export.int8.prepare (docs/QAT.md). ReLU students only"
    )
    epochs: int = Field(10, ge=1, description="QAT fine-tuning epochs (the best fake-quantized validation loss is kept)")
    lr: float = Field(3e-5, gt=0, description="Adam learning rate of the QAT fine-tuning")


class LimitsConfig(_Strict):
    fp16_rmse_ratio: float = Field(1.01, ge=1, description="fp16 files: RMSE at most this x the PyTorch student's")
    int8_rmse_ratio: float = Field(1.05, ge=1, description="int8 files: RMSE at most this x the PyTorch student's")
    fp16_accuracy_drop: float = Field(0.005, ge=0, le=1, description="classification, fp16 files: accuracy at most this below PyTorch's")
    int8_accuracy_drop: float = Field(0.01, ge=0, le=1, description="classification, int8 files: accuracy at most this below PyTorch's")


ALL_FORMATS = ["onnx_fp32", "onnx_fp16", "onnx_int8", "onnx_int8_dynamic", "ort_fp32", "ort_int8",
               "tflite_fp32", "tflite_fp16", "tflite_dynamic_range", "tflite_int8", "tflite_int8_io"]
FormatName = Literal["onnx_fp32", "onnx_fp16", "onnx_int8", "onnx_int8_dynamic", "ort_fp32", "ort_int8",
                     "tflite_fp32", "tflite_fp16", "tflite_dynamic_range", "tflite_int8", "tflite_int8_io"]


class AndroidConfig(_Strict):
    enabled: bool = Field(True, description="write the Android bundle (android/) with fixed-shape files")
    batch: int = Field(1, ge=1, description="fixed batch size of the bundle's files (NNAPI needs fixed shapes)")
    formats: list[FormatName] = Field(
        ["onnx_fp32", "onnx_int8", "ort_fp32", "ort_int8", "tflite_fp32", "tflite_fp16", "tflite_int8",
         "tflite_int8_io"],
        description="formats copied into the bundle, at the fixed batch size",
    )


class ExportConfig(_Strict):
    opset: int = Field(18, ge=17, le=23, description="ONNX opset (the dynamo exporter writes 18 natively)")
    simplify: bool = Field(True, description="run onnxsim on the exported graph")
    parity_atol: float = Field(1e-4, gt=0, description="max |diff| allowed between fp32 files and PyTorch")
    formats: list[FormatName] = Field(
        ALL_FORMATS, min_length=1, description="formats written with a dynamic batch axis (server use) and benchmarked"
    )
    check_mobile: bool = Field(True, description="run ORT's mobile usability checker on every ONNX file")
    int8: Int8Config = Field(default_factory=Int8Config)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    android: AndroidConfig = Field(default_factory=AndroidConfig)


class BenchConfig(_Strict):
    targets: list[str] = Field(
        ["host", "qemu-aarch64"], min_length=1,
        description="where to run the bench: host, qemu-aarch64, ssh://user@host[:port][?key=PATH&python=PATH]",
    )
    skip_unavailable: bool = Field(
        True, description="drop qemu-aarch64 (with a hint) when qemu is not installed, instead of failing"
    )
    formats: list[str] = Field(
        [], description="formats to bench (empty: every exported file that runs); the teacher's ONNX is always included"
    )
    parity_atol: float = Field(
        1e-5, gt=0, description="fp32 outputs on a target must match the host's within this x max(1, max |output|)"
    )
    threads: int = Field(1, ge=1, description="intra-op threads of the runtime")
    warmup: int = Field(50, ge=0, description="untimed runs before timing")
    runs: int = Field(300, ge=1, description="timed batch-1 runs")
    batch: int = Field(1, ge=1, description="batch size of the timed runs")
    max_seconds: float = Field(
        60.0, gt=0, description="per file and target: stop timing after this many seconds (at least 10 runs)"
    )
    emulated_teacher_rows: int = Field(
        64, ge=1, description="test rows the teacher predicts on emulated targets (fp32 parity only; it is slow)"
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, specs: list[str]) -> list[str]:
        from device_bench.targets import TargetError, parse_target

        for spec in specs:
            try:
                parse_target(spec)  # a malformed target fails here, before any work
            except TargetError as exc:
                raise ValueError(str(exc)) from None
        return specs


class Config(_Strict):
    seed: int = Field(0, ge=0, description="seed of every random draw; the same seed gives the same CPU run")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    qat: QATConfig = Field(default_factory=QATConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)

    @model_validator(mode="after")
    def _methods_fit_task(self) -> Config:
        from pipeline.data import task_of
        from pipeline.methods import METHODS

        task = task_of(self.data)
        for key, name in [("distill.method", self.distill.method)] + [
                ("distill.baselines", b) for b in self.distill.baselines]:
            if task not in METHODS[name].tasks:
                ok = sorted(n for n, m in METHODS.items() if task in m.tasks)
                raise ValueError(f"{key}: method {name!r} does not work on {task} data ({self.data.name}); "
                                 f"allowed for {task}: {', '.join(ok)}")
        if task == "classification" and self.student.keep_head != "label":
            raise ValueError("student.keep_head: classification students deploy the label head; use 'label'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def section_hash(self, *keys: str) -> str:
        """Hash of the named sections (plus the seed): a stage's slice of the config. A dotted key
        (``export.int8``) names a subsection."""
        full = self.to_dict()

        def pick(key: str):
            node = full
            for part in key.split("."):
                node = node[part]
            return node

        part = {"seed": full["seed"], **{k: pick(k) for k in keys}}
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- loading


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {key!r} appears twice (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (YAML says keys are unique;
    PyYAML silently keeps the last one)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise DuplicateKeyError(key, seen[key], key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: the base constructor reports it
            pass
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def strict_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys as an error (``DuplicateKeyError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def read_user_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file the user named; every OS or encoding problem is one UserError line."""
    try:
        if path.is_symlink() and not path.exists():
            raise UserError(f"{what} {path}: dangling symlink or symlink loop; give a regular file")
        if not path.exists():
            raise UserError(f"{what} {path} does not exist")
        if not path.is_file():
            raise UserError(f"{what} {path} is not a file")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, RuntimeError) as exc:
        raise UserError(f"{what} {path}: cannot be read: {os_error_text(exc)}; "
                        "it must be a readable UTF-8 YAML file") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    text = read_user_text(path, "config file")
    try:
        data = strict_yaml_load(text)
    except DuplicateKeyError as exc:
        raise UserError(f"config file {path}: {exc}; each key may appear once per section") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {' '.join(str(problem).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, got a {type(data).__name__}")
    return data


def _resolve_source_paths(tree: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative data.source paths (and teacher.onnx / teacher.checkpoint) in a config file are relative
    to that file's directory; they are stored absolute so the run directory's config.yaml still works."""
    def fix(node: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        for key in keys:
            value = node.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                try:
                    node[key] = str((base / value).resolve())
                except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
                    raise UserError(f"config key {key} = {value!r}: {os_error_text(exc)}; give a real file or "
                                    "directory") from None

    fix((tree.get("data") or {}).get("source") if isinstance(tree.get("data"), dict) else None, ("path", "root"))
    fix(tree.get("teacher"), ("onnx", "checkpoint"))
    return tree


def default_config_dict() -> dict[str, Any]:
    text = resources.files("pipeline").joinpath(DEFAULT_CONFIG).read_text()
    return yaml.safe_load(text) or {}


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set teacher.train.epochs=10")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {assignment!r}: {key!r} is not a dotted key such as data.noise.sigma")
    try:
        value = strict_yaml_load(raw) if raw.strip() else ""
    except DuplicateKeyError as exc:
        raise UserError(f"--set {assignment!r}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {assignment!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            lines.append(f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("value_error", "assertion_error"):
            lines.append(f"key '{key}': {msg}")
        else:
            lines.append(f"key '{key}' = {err.get('input')!r}: {msg}")
    head = f"invalid config ({source}): "
    return head + "; ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Default config, then the file at ``path`` on top, then ``--set`` overrides; validated."""
    tree = default_config_dict()
    source = "default config"
    if path is not None:
        path = Path(path)
        tree = _deep_merge(tree, _resolve_source_paths(_read_yaml(path), path.parent))
        source = str(path)
    for assignment in overrides:
        _apply_override(tree, assignment)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from None


def config_reference() -> str:
    """A Markdown table of every key, its default and its meaning (docs/CONFIG.md)."""
    rows = [
        "# Config reference",
        "",
        "Generated by `python -m pipeline config --reference > docs/CONFIG.md`; defaults are those of the",
        "shipped run (`pipeline/default.yaml` over the schema). Unknown keys are errors.",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]

    def walk(model: type[BaseModel], prefix: str, defaults: dict[str, Any]) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".", defaults.get(name, {}))
                continue
            typ = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            if str(ann).startswith("typing.Literal"):
                typ = " \\| ".join(repr(a) for a in ann.__args__)
            default = json.dumps(defaults.get(name))
            rows.append(f"| `{key}` | {typ} | `{default}` | {field.description or ''} |")

    walk(Config, "", load_config().to_dict())
    return "\n".join(rows) + "\n"
