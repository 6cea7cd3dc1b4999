"""Every bad input finetunekit handles: one case per row of docs/bad-inputs.md.

Each case runs its documented example and checks that the exception is the
finetunekit class, is also the builtin a user would catch, and that the message
names the problem and the fix. No raw TensorFlow/Keras exception may escape.

The table is generated from CASES, with the messages the library really gives:

    .venv/bin/python tests/test_bad_inputs.py > docs/bad-inputs.md
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetunekit as ftk
from finetunekit import errors

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
WEIGHTS_05 = (
    Path(
        os.environ.get(
            "FINETUNEKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
        )
    )
    / "weights"
    / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
)
OFFLINE = (
    "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
    "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5: "
    "None -- [Errno -3] Temporary failure in name resolution"
)


@dataclass(frozen=True)
class Case:
    """One bad input: what it is, a call that shows it, and what the user gets."""

    id: str
    what: str
    example: str  # run with exec() in the namespace described in the doc
    exc: type[Exception]
    builtin: type[Exception]
    says: tuple[str, ...]  # phrases the message must contain: the problem and the fix
    needs: str = ""  # "offline": downloads fail; "weights": the real 0.5 weights file


E = errors
CASES = [
    # -- load_base ----------------------------------------------------------------------
    Case(
        "unknown-name",
        "unknown base name",
        'ftk.load_base("mobilenet_v5")',
        E.UnknownBaseError,
        ValueError,
        ("Unknown base 'mobilenet_v5'", "Did you mean 'mobilenet_v2'"),
    ),
    Case(
        "base-type",
        "base of the wrong type",
        "ftk.load_base(42)",
        E.ArgumentTypeError,
        TypeError,
        ("expected a base name", "received int"),
    ),
    Case(
        "missing-saved-model",
        "saved model path that does not exist",
        'ftk.load_base("models/missing.keras")',
        E.WeightsNotFoundError,
        FileNotFoundError,
        ("No saved model at 'models/missing.keras'", "list_bases"),
    ),
    Case(
        "unreadable-saved-model",
        "file that is not a Keras model",
        'ftk.load_base(tmp / "notes.keras")',
        E.ConfigError,
        ValueError,
        ("Could not read a Keras model", "model.save('name.keras')"),
    ),
    Case(
        "missing-weights-file",
        "weights file that does not exist",
        'ftk.load_base("mobilenet_v2", weights="missing/w.h5", input_shape=(32, 32, 3))',
        E.WeightsNotFoundError,
        FileNotFoundError,
        ("No weights file at 'missing/w.h5'", "weights='imagenet' or weights=None"),
    ),
    Case(
        "weights-value",
        "weights neither 'imagenet', None nor a path",
        'ftk.load_base("mobilenet_v2", weights="imagenet21k", input_shape=(32, 32, 3))',
        E.ConfigError,
        ValueError,
        ("weights must be 'imagenet', None, or a path", "received 'imagenet21k'"),
    ),
    Case(
        "weights-type",
        "weights of the wrong type",
        'ftk.load_base("mobilenet_v2", weights=3, input_shape=(32, 32, 3), alpha=0.35)',
        E.ArgumentTypeError,
        TypeError,
        ("weights must be 'imagenet', None or a path", "received int"),
    ),
    Case(
        "weights-mismatch",
        "weights file of another architecture (alpha 0.5 file, alpha 0.35 base)",
        'ftk.load_base("mobilenet_v2", weights=weights_05, alpha=0.35, input_shape=(32, 32, 3))',
        E.WeightsMismatchError,
        ValueError,
        ("do not fit", "same alpha"),
        needs="weights",
    ),
    Case(
        "weights-truncated",
        "a weights file cut short (an interrupted download)",
        'ftk.load_base("mobilenet_v2", weights="cut.h5", input_shape=(32, 32, 3), alpha=0.35)',
        E.ConfigError,
        ValueError,
        ("is cut short", "Download or copy it again"),
    ),
    Case(
        "weights-folder",
        "a folder passed as the weights file",
        'ftk.load_base("mobilenet_v2", weights=tmp, input_shape=(32, 32, 3), alpha=0.35)',
        E.ConfigError,
        ValueError,
        ("is a folder", "pass the weights file inside it"),
    ),
    Case(
        "weights-renamed",
        "a .keras archive renamed .h5, passed as the weights file",
        'ftk.load_base("mobilenet_v2", weights="m.h5", input_shape=(32, 32, 3), alpha=0.35)',
        E.ConfigError,
        ValueError,
        ("is a Keras '.keras' archive named '.h5'", "rename it to"),
    ),
    Case(
        "truncated-keras",
        "a .keras file cut short",
        'ftk.load_base(tmp / "cut.keras")',
        E.ConfigError,
        ValueError,
        ("Could not read a Keras model", "not a complete '.keras' archive", "copy it again"),
    ),
    Case(
        "broken-cache",
        "a cut-short ImageNet weights file in the Keras cache",
        'ftk.load_base("mobilenet_v2", alpha=0.35, input_shape=(128, 128, 3))',
        E.WeightsUnavailableError,
        OSError,
        ("is cut short", "Delete the file", "_0.35_128_no_top.h5"),
        needs="broken-cache",
    ),
    Case(
        "download-failure",
        "ImageNet download fails (offline, proxy)",
        'ftk.load_base("mobilenet_v2", alpha=0.35, input_shape=(96, 96, 3))',
        E.WeightsUnavailableError,
        OSError,
        (
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5",
            "Keras cache folder",
            "weights=PATH",
        ),
        needs="offline",
    ),
    Case(
        "one-channel",
        "input_shape with 1 channel",
        'ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 1))',
        E.InputShapeError,
        ValueError,
        ("must end with 3 channels", "Convert grayscale"),
    ),
    Case(
        "too-small",
        "input_shape too small for the family",
        'ftk.load_base("inception_v3", weights=None, input_shape=(64, 64, 3))',
        E.InputShapeError,
        ValueError,
        ("at least 75x75", "Resize your images"),
    ),
    Case(
        "malformed-shape",
        "input_shape not (height, width, channels)",
        'ftk.load_base("mobilenet_v2", weights=None, input_shape=(224, 224))',
        E.InputShapeError,
        ValueError,
        ("(height, width, channels)", "received (224, 224)"),
    ),
    Case(
        "include-top",
        "constructor argument that belongs to the head: include_top",
        'ftk.load_base("mobilenet_v2", weights=None, include_top=True)',
        E.ConfigError,
        ValueError,
        ("does not take include_top=True", "add_head()"),
    ),
    Case(
        "pooling-kwarg",
        "constructor argument that belongs to the head: pooling",
        'ftk.load_base("mobilenet_v2", weights=None, pooling="avg")',
        E.ConfigError,
        ValueError,
        ("does not take pooling='avg'", "add_head(base, pooling=...)"),
    ),
    Case(
        "misspelled-kwarg",
        "misspelled constructor argument",
        'ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpah=0.35)',
        E.ConfigError,
        ValueError,
        ("alpah", "Check the spelling"),
    ),
    Case(
        "kwarg-value",
        "constructor argument Keras rejects (alpha with ImageNet weights)",
        'ftk.load_base("mobilenet_v2", alpha=0.3, input_shape=(96, 96, 3))',
        E.ConfigError,
        ValueError,
        ("rejected the arguments", "alpha"),
        needs="offline",
    ),
    Case(
        "kwargs-with-model",
        "constructor arguments with a keras.Model base",
        "ftk.load_base(base, alpha=0.35)",
        E.ConfigError,
        ValueError,
        ("only apply to a base name", "used as it is"),
    ),
    Case(
        "shape-vs-model",
        "input_shape that contradicts a keras.Model base",
        "ftk.load_base(base, input_shape=(64, 64, 3))",
        E.InputShapeError,
        ValueError,
        ("does not match the model's input shape", "leave input_shape out"),
    ),
    Case(
        "subclassed",
        "subclassed keras.Model",
        "ftk.load_base(subclassed)",
        E.ModelStructureError,
        ValueError,
        ("subclassed keras.Model", "Functional model"),
    ),
    Case(
        "unbuilt-sequential",
        "Sequential without an input shape",
        "ftk.load_base(unbuilt)",
        E.ModelStructureError,
        ValueError,
        ("is not built", "keras.Input(shape=...)"),
    ),
    Case(
        "list-bases-pattern",
        "list_bases pattern that is not a string",
        "ftk.list_bases(3)",
        E.ArgumentTypeError,
        TypeError,
        ("glob pattern string", "received int"),
    ),
    # -- freeze / unfreeze_last -------------------------------------------------------------
    Case(
        "freeze-not-a-model",
        "freeze on something that is not a model",
        'ftk.freeze("model")',
        E.ArgumentTypeError,
        TypeError,
        ("Expected a keras.Model", "received str"),
    ),
    Case(
        "n-below-one",
        "unfreeze_last with n < 1",
        "ftk.unfreeze_last(model, 0)",
        E.ConfigError,
        ValueError,
        ("n must be a positive int", "received 0"),
    ),
    Case(
        "n-too-large",
        "unfreeze_last with more layers than the base has",
        "ftk.unfreeze_last(model, 1000)",
        E.ConfigError,
        ValueError,
        ("has only 52 layers with weights", "Use n <= 52"),
    ),
    Case(
        "n-blocks-too-large",
        "unfreeze_last with more blocks than the base has",
        'ftk.unfreeze_last(model, 100, unit="block")',
        E.ConfigError,
        ValueError,
        ("has only 19 blocks", "n <= 19"),
    ),
    Case(
        "bad-unit",
        "unknown unit",
        'ftk.unfreeze_last(model, 2, unit="blocks")',
        E.ConfigError,
        ValueError,
        ("unit must be 'layer' or 'block'", "received 'blocks'"),
    ),
    Case(
        "freeze-train-bn",
        "train_bn that is not a bool",
        'ftk.freeze(base, train_bn="no")',
        E.ConfigError,
        ValueError,
        ("train_bn must be True or False", "received 'no'"),
    ),
    # -- add_head ---------------------------------------------------------------------------
    Case(
        "head-twice",
        "add_head on a model that already has a head",
        "ftk.add_head(model, 3)",
        E.ModelStructureError,
        ValueError,
        ("already has a head", "find_base(model)"),
    ),
    Case(
        "flat-classifier",
        "a classifier built on the base's own layers (no nested base)",
        'ftk.freeze(keras.Model(base.input, keras.layers.Dense(3, activation="softmax")('
        "keras.layers.GlobalAveragePooling2D()(base.output))))",
        E.ModelStructureError,
        ValueError,
        ("ends in a classifier (softmax output)", "cannot tell its base from its head",
         "base(inputs, training=False)"),
    ),
    Case(
        "two-input-base",
        "a base of two image inputs",
        "ftk.add_head(keras.Model([base.input, keras.Input((32, 32, 3))], base.output), 3)",
        E.ModelStructureError,
        ValueError,
        ("takes 2 inputs", "one image input"),
    ),
    Case(
        "num-classes-missing",
        "multiclass without num_classes",
        "ftk.add_head(base)",
        E.ConfigError,
        ValueError,
        ("needs num_classes >= 2", "received None"),
    ),
    Case(
        "num-classes-one",
        "multiclass with one class",
        "ftk.add_head(base, 1)",
        E.ConfigError,
        ValueError,
        ("needs num_classes >= 2", "use task='binary'"),
    ),
    Case(
        "num-classes-type",
        "num_classes that is not a positive int",
        'ftk.add_head(base, "5")',
        E.ConfigError,
        ValueError,
        ("num_classes must be a positive int", "received '5'"),
    ),
    Case(
        "binary-many-classes",
        "binary task with 3 classes",
        'ftk.add_head(base, 3, task="binary")',
        E.ConfigError,
        ValueError,
        ("one sigmoid output", "use task='multiclass'"),
    ),
    Case(
        "multilabel-no-classes",
        "multilabel without the number of labels",
        'ftk.add_head(base, task="multilabel")',
        E.ConfigError,
        ValueError,
        ("task='multilabel' needs num_classes",),
    ),
    Case(
        "head-task",
        "unknown task",
        'ftk.add_head(base, 3, task="detection")',
        E.ConfigError,
        ValueError,
        ("task must be one of", "'multiclass'", "received 'detection'"),
    ),
    Case(
        "head-pooling",
        "unknown pooling",
        'ftk.add_head(base, 3, pooling="mean")',
        E.ConfigError,
        ValueError,
        ("pooling must be one of", "'avg'", "received 'mean'"),
    ),
    Case(
        "pooling-none",
        "pooling=None on a base that outputs feature maps",
        "ftk.add_head(base, 3, pooling=None)",
        E.ConfigError,
        ValueError,
        ("outputs feature maps", "pass pooling='avg'"),
    ),
    Case(
        "flatten-any-size",
        "pooling='flatten' on a base without a fixed image size",
        'ftk.add_head(any_size_base, 3, pooling="flatten")',
        E.ConfigError,
        ValueError,
        ("needs a fixed image size", "Use pooling='avg'"),
    ),
    Case(
        "dropout",
        "dropout outside [0, 1)",
        "ftk.add_head(base, 3, dropout=1.5)",
        E.ConfigError,
        ValueError,
        ("dropout must be a rate in [0, 1)", "received 1.5"),
    ),
    Case(
        "normalize",
        "normalize that is not a bool",
        'ftk.add_head(base, 3, normalize="yes")',
        E.ConfigError,
        ValueError,
        ("normalize must be True or False", "received 'yes'"),
    ),
    Case(
        "hidden",
        "hidden that is not a sequence of sizes",
        "ftk.add_head(base, 3, hidden=128)",
        E.ConfigError,
        ValueError,
        ("hidden must be a sequence of positive layer sizes", "(128,)"),
    ),
    Case(
        "head-two-outputs",
        "a base with two outputs",
        "ftk.add_head(keras.Model(base.inputs, [base.output, base.output]), 3)",
        E.ModelStructureError,
        ValueError,
        ("has 2 outputs", "needs a base with one", "keras.Model(base.inputs, base.outputs[0])"),
    ),
    # -- compile_for ------------------------------------------------------------------------
    Case(
        "compile-not-a-model",
        "compile_for on something that is not a model",
        'ftk.compile_for("model")',
        E.ArgumentTypeError,
        TypeError,
        ("expected a keras.Model", "received str"),
    ),
    Case(
        "compile-task",
        "compile_for with an unknown task",
        'ftk.compile_for(model, "segmentation")',
        E.ConfigError,
        ValueError,
        ("task must be one of", "received 'segmentation'"),
    ),
    Case(
        "optimizer",
        "unknown optimizer",
        'ftk.compile_for(model, optimizer="adamax2")',
        E.ConfigError,
        ValueError,
        ("optimizer must be one of", "keras.optimizers.Optimizer"),
    ),
    Case(
        "optimizer-reused",
        "optimizer instance already built for other variables (reused after unfreezing)",
        "opt = keras.optimizers.Adam(); opt.build(model.trainable_variables[-2:]); "
        "ftk.compile_for(model, optimizer=opt)",
        E.ConfigError,
        ValueError,
        ("already built for other variables", "Pass a new optimizer instance"),
    ),
    Case(
        "learning-rate",
        "learning rate that is not a positive number",
        "ftk.compile_for(model, learning_rate=0)",
        E.ConfigError,
        ValueError,
        ("learning_rate must be a positive", "received 0"),
    ),
    Case(
        "label-mode",
        "unknown label mode",
        'ftk.compile_for(model, label_mode="onehot")',
        E.ConfigError,
        ValueError,
        ("label_mode for task='multiclass' must be one of", "'categorical'"),
    ),
    Case(
        "output-vs-task",
        "output layer that does not fit the task (binary task, 3-unit softmax)",
        'ftk.compile_for(model, "binary")',
        E.ConfigError,
        ValueError,
        ("needs one sigmoid output unit", "the model has 3"),
    ),
    Case(
        "stale-compile",
        "fit after a trainable change without recompiling",
        "ftk.compile_for(model); ftk.unfreeze_last(model, 2); model.fit(x, y, verbose=0)",
        E.StepOrderError,
        RuntimeError,
        ("changed since compile_for compiled it", "compile_for(model, ...) again"),
    ),
    Case(
        "compile-tanh-binary",
        "an output that gives neither probabilities nor logits (tanh, binary task)",
        'ftk.compile_for(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, "tanh")]), '
        '"binary")',
        E.ConfigError,
        ValueError,
        ("ends in tanh, whose outputs are neither", "add_head(task='binary')"),
    ),
    Case(
        "compile-softmax-regression",
        "a classifier's softmax output compiled for regression",
        'ftk.compile_for(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")]), '
        '"regression")',
        E.ConfigError,
        ValueError,
        ("ends in softmax, whose 3 output(s) always sum to 1", "add_head(task='regression')"),
    ),
    Case(
        "compile-headless",
        "compiling a base without its head (its output a feature map)",
        "ftk.compile_for(base)",
        E.ModelStructureError,
        ValueError,
        ("a feature map rather than one prediction per image", "add_head(base, num_classes)"),
    ),
    Case(
        "classifier-headless",
        "predicting with a base without its head",
        "ftk.Classifier(base).predict(x)",
        E.ModelStructureError,
        ValueError,
        ("a feature map rather than one prediction per image", "add_head(base, num_classes)"),
    ),
    Case(
        "compile-unbuilt",
        "compiling a model with no output yet",
        "ftk.compile_for(keras.Sequential())",
        E.ModelStructureError,
        ValueError,
        ("has no output yet", "add_head(base, num_classes)"),
    ),
    # -- FineTuner --------------------------------------------------------------------------
    Case(
        "strategy-type",
        "strategy that is not a tf.distribute.Strategy",
        'ftk.FineTuner(strategy="mirrored")',
        E.ArgumentTypeError,
        TypeError,
        ("strategy must be a tf.distribute.Strategy", "received str"),
    ),
    Case(
        "tuner-task",
        "FineTuner with an unknown task",
        'ftk.FineTuner(task="ranking")',
        E.ConfigError,
        ValueError,
        ("task must be one of", "received 'ranking'"),
    ),
    Case(
        "tuner-num-classes",
        "FineTuner with one class",
        "ftk.FineTuner(num_classes=1)",
        E.ConfigError,
        ValueError,
        ("needs num_classes >= 2", "use task='binary'"),
    ),
    Case(
        "tuner-unknown-base",
        "FineTuner with an unknown base name (said at construction, before any data)",
        'ftk.FineTuner("mobilenetv2x", num_classes=3)',
        E.UnknownBaseError,
        ValueError,
        ("Unknown base 'mobilenetv2x'", "Did you mean 'mobilenet_v2'"),
    ),
    Case(
        "tuner-base-keyword",
        "FineTuner with a misspelt keyword for the base",
        'ftk.FineTuner("mobilenet_v2", num_classes=3, alpah=0.35)',
        E.ConfigError,
        ValueError,
        ("takes no argument 'alpah'", "did you mean 'alpha'"),
    ),
    Case(
        "tuner-load-base-again",
        "FineTuner.load_base() again once the tuner has a model",
        'ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3), '
        "alpha=0.35).load_base().add_head().load_base()",
        E.StepOrderError,
        RuntimeError,
        ("has a model already", "make a new FineTuner"),
    ),
    Case(
        "compile-two-outputs",
        "compile_for on a model of two outputs",
        "ftk.compile_for(keras.Model(i := keras.Input((4,)), [keras.layers.Dense(2)(i), "
        "keras.layers.Dense(1)(i)]))",
        E.ModelStructureError,
        ValueError,
        ("has 2 outputs", "model.compile(loss=[...])"),
    ),
    Case(
        "negative-epochs",
        "negative epochs",
        "tuner.fit(x, y, head_epochs=-1)",
        E.ConfigError,
        ValueError,
        ("head_epochs must be an int >= 0", "received -1"),
    ),
    Case(
        "head-before-base",
        "add_head before load_base",
        "tuner.add_head()",
        E.StepOrderError,
        RuntimeError,
        ("No base yet", "call load_base() first"),
    ),
    Case(
        "train-before-head",
        "train before add_head",
        "tuner.train(x, y)",
        E.StepOrderError,
        RuntimeError,
        ("No model yet", "add_head()"),
    ),
    Case(
        "save-before-model",
        "save before there is a model",
        'tuner.save("tuned.keras")',
        E.StepOrderError,
        RuntimeError,
        ("No model yet",),
    ),
    Case(
        "save-suffix",
        "save path without .keras",
        'tuner.load_base().add_head().save(tmp / "tuned.h5")',
        E.ConfigError,
        ValueError,
        ("saves Keras 3 '.keras' files", "tuned.keras"),
    ),
    Case(
        "plan-without-classes",
        "plan before num_classes is known",
        'ftk.FineTuner("mobilenet_v2", weights=None, input_shape=(32, 32, 3)).plan()',
        E.StepOrderError,
        RuntimeError,
        ("num_classes is unknown", "num_classes=N"),
    ),
    # -- checkpoints and resume ------------------------------------------------------------
    Case(
        "resume-other-recipe",
        "resuming a checkpoint with another recipe",
        'tuner.fit(x, y, checkpoint_dir=tmp / "run", head_epochs=1, finetune_epochs=0, '
        'verbose=0); tuner.fit(x, y, checkpoint_dir=tmp / "run", head_epochs=2, '
        "finetune_epochs=0, verbose=0)",
        E.CheckpointError,
        ValueError,
        ("holds a run with other settings", "recipe.head_epochs: stored 1, asked 2",
         "pass a new checkpoint_dir, or delete"),
    ),
    Case(
        "resume-other-data",
        "resuming a checkpoint with other data",
        'tuner.fit(x, y, checkpoint_dir=tmp / "run2", head_epochs=1, finetune_epochs=0, '
        'verbose=0); tuner.fit(x[:12], y[:12], checkpoint_dir=tmp / "run2", head_epochs=1, '
        "finetune_epochs=0, verbose=0)",
        E.CheckpointError,
        ValueError,
        ("holds a run with other data", "train.count: stored 24, asked 12",
         "pass a new checkpoint_dir, or delete"),
    ),
    Case(
        "resume-no-checkpoint",
        "resume=True (`--resume`) where there is no checkpoint",
        'tuner.fit(x, y, checkpoint_dir=tmp / "empty", resume=True)',
        E.CheckpointError,
        ValueError,
        ("resume=True, but", "holds no checkpoint (checkpoint.npz)", "drop resume"),
    ),
    Case(
        "checkpoint-dir-file",
        "checkpoint_dir that is a file",
        'tuner.fit(x, y, checkpoint_dir=tmp / "notes.keras")',
        E.CheckpointError,
        ValueError,
        ("is a file", "pass a folder (it is created if missing)"),
    ),
    Case(
        "checkpoint-unwritable",
        "checkpoint_dir that cannot be written",
        'tuner.fit(x, y, checkpoint_dir=tmp / "notes.keras" / "run", verbose=0)',
        E.CheckpointError,
        ValueError,
        ("checkpoint_dir: cannot write", "Pass a path in a folder you can write to"),
    ),
    # -- data -----------------------------------------------------------------------------
    Case(
        "image-rank",
        "images without a channel axis",
        "tuner.fit(x[..., 0], y)",
        E.DataError,
        ValueError,
        ("(batch, height, width, channels)", "x[..., None]"),
    ),
    Case(
        "image-channels",
        "images with 2 channels",
        "tuner.fit(x[..., :2], y)",
        E.DataError,
        ValueError,
        ("1 (grayscale), 3 (RGB) or 4 (RGBA) channels", "channels-last"),
    ),
    Case(
        "length-mismatch",
        "x and y of different lengths",
        "tuner.fit(x, y[:10])",
        E.DataError,
        ValueError,
        ("same number of examples", "24 images and 10 labels"),
    ),
    Case(
        "label-range",
        "class index out of range",
        "tuner.fit(x, y + 3)",
        E.DataError,
        ValueError,
        ("out of range for 3 classes", "expected 0..2"),
    ),
    Case(
        "one-hot-width",
        "one-hot labels of the wrong width",
        "tuner.fit(x, np.eye(4)[y])",
        E.DataError,
        ValueError,
        ("one-hot with 4 columns", "one-hot rows with 3 columns"),
    ),
    Case(
        "negative-labels",
        "negative class indices",
        "tuner.fit(x, y - 1)",
        E.DataError,
        ValueError,
        ("expects integer class indices", "Encode classes as integers"),
    ),
    Case(
        "binary-labels",
        "binary task with labels other than 0 and 1",
        "binary_tuner.fit(x, y + 1)",
        E.DataError,
        ValueError,
        ("expects labels of 0 and 1", "received values from 1 to 3"),
    ),
    Case(
        "string-labels",
        "labels that are strings",
        'tuner.fit(x, np.array(["cat"] * 24))',
        E.DataError,
        ValueError,
        ("must be numeric", "Encode class names as integers"),
    ),
    Case(
        "labels-missing",
        "images without labels",
        "tuner.fit(x)",
        E.DataError,
        ValueError,
        ("labels are missing", "(images, labels)"),
    ),
    Case(
        "sixteen-bit-pixels",
        "16-bit images (values up to 65535)",
        'tuner.fit((x * 257).astype("uint16"), y)',
        E.DataError,
        ValueError,
        ("beyond 255 (16-bit images?)", "x / 257"),
    ),
    Case(
        "evaluate-one-hot-width",
        "evaluate with one-hot rows of another width than the model's classes",
        "ftk.evaluate(model, (x, np.eye(2)[y % 2]))",
        E.DataError,
        ValueError,
        ("one-hot rows of 2 columns but this model has 3 classes",),
    ),
    Case(
        "sample-weights-tuple",
        "arrays with sample weights (x, y, w) of the wrong length",
        "tuner.fit((x, y, np.ones(len(y) + 1)))",
        E.DataError,
        ValueError,
        ("sample weights must be one finite number >= 0 per image", "w of shape (len(x),)"),
    ),
    Case(
        "labels-twice",
        "labels passed next to a dataset",
        "tuner.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), y)",
        E.DataError,
        ValueError,
        ("pass labels inside the dataset",),
    ),
    Case(
        "dataset-elements",
        "dataset of images only",
        "tuner.fit(tf.data.Dataset.from_tensor_slices(x).batch(8))",
        E.DataError,
        ValueError,
        ("(images, labels) tuples", "ds.map("),
    ),
    Case(
        "nan-pixels",
        "images holding NaN",
        "tuner.fit(np.full_like(x, np.nan), y)",
        E.DataError,
        ValueError,
        ("NaN or infinite pixel values",),
    ),
    Case(
        "pixels-0-1",
        "images divided by 255 (all pixels within [0, 1])",
        "tuner.fit(x / 255, y)",
        E.DataError,
        ValueError,
        ("every pixel value is within [0, 1]", "raw 0-255 pixels", "x * 255"),
    ),
    Case(
        "pixels-negative",
        "images already preprocessed (negative pixels)",
        "tuner.fit(x / 127.5 - 1, y)",
        E.DataError,
        ValueError,
        ("negative", "as after preprocess_input", "raw 0-255 pixels"),
    ),
    Case(
        "nan-labels",
        "regression targets holding NaN",
        "regression_tuner.fit(x, np.where(y == 2, np.nan, 1.0))",
        E.DataError,
        ValueError,
        ("NaN or infinite", "np.isfinite(y)"),
    ),
    Case(
        "label-past-first-batches",
        "a class index out of range past the first batches of a dataset",
        "tuner.fit(batches(x, np.where(np.arange(24) == 20, 7, y), 2))",
        E.DataError,
        ValueError,
        ("labels from 0 to 7", "class indices 0..2", "set num_classes"),
    ),
    Case(
        "binary-label-dataset",
        "a label 2 in a binary dataset, past the first batches",
        "binary_tuner.fit(batches(x, np.where(np.arange(24) == 20, 2, y % 2), 2))",
        E.DataError,
        ValueError,
        ("labels from 0 to 2", "task='binary'", "values from 0 to 1"),
    ),
    Case(
        "nan-images-dataset",
        "a dataset whose images hold NaN (past the first batch)",
        "tuner.fit(batches(np.where(np.arange(24)[:, None, None, None] == 20, np.nan, x), y, 2))",
        E.DataError,
        ValueError,
        ("NaN or infinite pixel values", "ds.filter("),
    ),
    Case(
        "infinite-dataset",
        "an endless dataset (.repeat())",
        "tuner.fit(batches(x, y).repeat())",
        E.DataError,
        ValueError,
        ("is infinite", "Remove .repeat()"),
    ),
    Case(
        "hidden-repeat",
        "an endless dataset whose `.repeat()` a `.filter()` hides (its length unknown)",
        "tuner.fit(batches(x, y).repeat().filter(lambda images, labels: True))",
        E.DataError,
        ValueError,
        ("is infinite", "Remove .repeat()"),
    ),
    Case(
        "generator",
        "a Python generator of batches (it can be read once)",
        "tuner.fit((batch for batch in [(x, y)]))",
        E.DataError,
        ValueError,
        ("can be read only once", "tf.data.Dataset.from_generator("),
    ),
    Case(
        "other-channels",
        "RGB images for a base of 4 channels",
        "ftk.FineTuner(keras.Model(i := keras.Input((32, 32, 4)), keras.layers.Conv2D(4, 3)(i)), "
        "num_classes=3).fit(x, y, unfreeze=1)",
        E.DataError,
        ValueError,
        ("must have 4 channels", "Pass images of 4 channels"),
    ),
    Case(
        "mixed-channels",
        "a batch of grayscale and RGB images (files decoded with their own channels)",
        "tuner.fit(tf.data.Dataset.from_generator(lambda: ((x[i][..., : 1 + 2 * (i % 2)], i % 3) "
        "for i in range(8)), output_signature=(tf.TensorSpec((32, 32, None)), "
        "tf.TensorSpec((), tf.int64))).batch(4))",
        E.DataError,
        ValueError,
        ("differ in size or channels", "channels=3"),
    ),
    Case(
        "own-head",
        "`add_head` on a model with a classifier of its own after its base",
        "ftk.add_head(keras.Model(i := keras.Input((32, 32, 3)), keras.layers.Dense(3, "
        "activation='softmax')(keras.layers.GlobalAveragePooling2D()(base(i)))), 5)",
        E.ModelStructureError,
        ValueError,
        ("head of its own", "find_base(model)"),
    ),
    Case(
        "train-keyword",
        "a keyword of Keras' `fit` that `train()` does not take",
        "tuner.train(x, y, validation_split=0.2)",
        E.ConfigError,
        ValueError,
        ("Unknown setting validation_split", "validation_data="),
    ),
    Case(
        "validation-classes",
        "validation data with other classes than the training data",
        'tuner.fit(named(x, y, ["a", "b", "c"]), validation_data=named(x, y % 2, ["a", "c"]))',
        E.DataError,
        ValueError,
        ("other classes", "missing from validation: ['b']", "same class subfolders"),
    ),
    Case(
        "mixed-sizes",
        "an unbatched dataset of images of different sizes",
        "tuner.fit(mixed_sizes)",
        E.DataError,
        ValueError,
        ("different sizes", "tf.image.resize"),
    ),
    Case(
        "hidden-folder",
        "a hidden folder (.ipynb_checkpoints) inside a class folder",
        'ftk.data.from_directory(tmp / "photos", image_size=32)',
        E.DataError,
        ValueError,
        (".ipynb_checkpoints", "would read them as images of their class", "rm -r"),
    ),
    Case(
        "nan-loss",
        "a loss that becomes NaN or infinite while training",
        "regression_tuner.fit(x, np.full(24, 1e30))",
        E.TrainingDivergedError,
        ArithmeticError,
        ("The loss became inf in epoch 1 of the head phase", "lower the learning rate"),
    ),
    Case(
        "empty-data",
        "no images at all",
        "tuner.fit(x[:0], y[:0])",
        E.DataError,
        ValueError,
        ("empty", "nothing to train on"),
    ),
    Case(
        "batch-size",
        "batch size below 1",
        "tuner.fit(x, y, batch_size=0)",
        E.ConfigError,
        ValueError,
        ("batch_size must be a positive int", "received 0"),
    ),
    Case(
        "augment-views",
        "augmented views per image below 1",
        "tuner.fit(x, y, augment_views=0)",
        E.ConfigError,
        ValueError,
        ("augment_views must be", "an int >= 1", "received 0"),
    ),
    Case(
        "fit-unknown-setting",
        "a misspelt fit setting",
        "tuner.fit(x, y, head_epoch=5)",
        E.ConfigError,
        ValueError,
        ("Unknown setting head_epoch", "head_epochs"),
    ),
    Case(
        "fit-class-weight",
        "Keras' class_weight passed to fit",
        "tuner.fit(x, y, class_weight={0: 1.0, 1: 2.0})",
        E.ConfigError,
        ValueError,
        ("Unknown setting class_weight", "w = weights_per_class[y]", "(images, labels, weights)"),
    ),
    Case(
        "fit-callback-type",
        "a callback that is not a Keras callback",
        "tuner.fit(x, y, callbacks=[print])",
        E.ArgumentTypeError,
        TypeError,
        ("callbacks must be a list of keras.callbacks.Callback", "CSVLogger"),
    ),
    Case(
        "fit-unfreeze-too-many",
        "unfreezing more blocks than the base has (caught before the head trains)",
        "tuner.fit(x, y, unfreeze=1000)",
        E.ConfigError,
        ValueError,
        ("n=1000", "has only", "blocks"),
    ),
    Case(
        "fit-unfreeze-order",
        "gradual unfreezing with stages that do not increase",
        "tuner.fit(x, y, unfreeze=(2, 1))",
        E.ConfigError,
        ValueError,
        ("unfreeze must be an int >= 0 or an increasing sequence", "(2, 1)", "increasing order"),
    ),
    Case(
        "fit-lr-decay-zero",
        "a per-block rate decay of 0 (the blocks would not train)",
        "tuner.fit(x, y, lr_decay=0)",
        E.ConfigError,
        ValueError,
        ("lr_decay must be None or a factor in (0, 1]", "received 0", "rate * lr_decay**k"),
    ),
    Case(
        "fit-warmup-too-long",
        "a warm-up as long as the phase",
        "tuner.fit(x, y, finetune_epochs=3, warmup=3)",
        E.ConfigError,
        ValueError,
        ("warmup=3 epochs is not shorter than the phase", "warmup < 3", "warmup=0.1"),
    ),
    Case(
        "fit-warmup-negative",
        "a negative warm-up",
        "tuner.fit(x, y, warmup=-1)",
        E.ConfigError,
        ValueError,
        ("warmup must be 0, a fraction in (0, 1) of each phase, or a whole number", "-1"),
    ),
    Case(
        "find-lr-nothing-trainable",
        "a learning-rate sweep of a model where nothing trains",
        'tuner.load_base().add_head(); tuner.model.get_layer("head_output").trainable = False; '
        "ftk.find_lr(tuner, x, y)",
        E.ConfigError,
        ValueError,
        ("Nothing trains in the head phase", "no rate to find", "phase='finetune'"),
    ),
    Case(
        "find-lr-range",
        "a sweep whose end is below its start",
        "ftk.find_lr(tuner, x, y, start=1e-2, end=1e-4)",
        E.ConfigError,
        ValueError,
        ("end must be a rate above start=0.01", "received 0.0001"),
    ),
    Case(
        "find-lr-phase",
        "a sweep of an unknown phase",
        'ftk.find_lr(tuner, x, y, phase="body")',
        E.ConfigError,
        ValueError,
        ("phase must be", "'head'", "'finetune'"),
    ),
    Case(
        "fit-finetune-rate",
        "a negative fine-tuning learning rate (caught before any image is read)",
        "tuner.fit(x, y, finetune_learning_rate=-1)",
        E.ConfigError,
        ValueError,
        ("finetune_learning_rate must be a positive number", "received -1"),
    ),
    Case(
        "fit-unit",
        "a misspelt unit (caught before any image is read)",
        'tuner.fit(x, y, unit="blocks")',
        E.ConfigError,
        ValueError,
        ("unit must be 'block' or 'layer'", "received 'blocks'"),
    ),
    Case(
        "tuner-seed",
        "a seed that is not an int",
        'ftk.FineTuner(seed="abc")',
        E.ConfigError,
        ValueError,
        ("seed must be an int >= 0 or None", "received 'abc'"),
    ),
    Case(
        "fit-a-path",
        "a folder path passed to fit",
        'tuner.fit("flowers/")',
        E.DataError,
        ValueError,
        ("'flowers/' is a path, not images", "from_directory", "folder.train"),
    ),
    Case(
        "fit-directory-data",
        "all of from_directory's result passed to fit",
        'tuner.fit(ftk.data.from_directory(tmp / "flowers", image_size=32))',
        E.DataError,
        ValueError,
        ("all that from_directory returns", "Pass its .train", "validation_data="),
    ),
    Case(
        "validation-as-y",
        "validation data passed as the second argument",
        "tuner.fit(batches(x, y), batches(x, y))",
        E.DataError,
        ValueError,
        ("not as y", "validation_data="),
    ),
    Case(
        "unknown-image-shape",
        "images of unknown shape (tf.py_function)",
        "tuner.fit(batches(x, y).map(lambda a, b: (tf.py_function(lambda t: t, [a], "
        "tf.float32), b)))",
        E.DataError,
        ValueError,
        ("no known shape", "tf.ensure_shape"),
    ),
    Case(
        "validation-size",
        "validation images of another size than the model's",
        "tuner.fit(x, y, validation_data=(x[:6, :30, :30], y[:6]), verbose=0)",
        E.DataError,
        ValueError,
        ("validation_data: the images are 30x30", "takes 32x32"),
    ),
    Case(
        "class-count",
        "data of other classes than num_classes",
        'tuner.fit(ftk.data.from_directory(tmp / "flowers", image_size=32).train, verbose=0)',
        E.DataError,
        ValueError,
        ("The data has 2 classes", "num_classes=3", "Pass num_classes=2"),
    ),
    Case(
        "binary-three-class-data",
        "task='binary' with data of three classes",
        'binary_tuner.fit(named(x, y, ["a", "b", "c"]), verbose=0)',
        E.DataError,
        ValueError,
        ("task='binary' takes two classes", "task='multiclass' with num_classes=3"),
    ),
    Case(
        "label-ids",
        "labels that are ids, not class indices",
        'ftk.FineTuner("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)'
        ".fit(x, np.where(y == 2, 500, y), verbose=0)",
        E.DataError,
        ValueError,
        ("would have 501 classes, but only 3 different labels occur",
         "np.unique(y, return_inverse=True)[1]"),
    ),
    Case(
        "multi-hot-multiclass",
        "multi-hot label rows with task='multiclass'",
        "tuner.fit(x, np.eye(3)[y] + np.eye(3)[(y + 1) % 3], verbose=0)",
        E.DataError,
        ValueError,
        ("Rows of the labels do not sum to 1", "use task='multilabel'"),
    ),
    Case(
        "nan-sample-weights",
        "a NaN sample weight past the first batch",
        "tuner.fit(tf.data.Dataset.from_tensor_slices((x, y, np.where(np.arange(24) == 20, "
        "np.nan, 1.0))).batch(8), verbose=0)",
        E.DataError,
        ValueError,
        ("sample weights that are NaN, infinite or negative", "Fix or drop those weights"),
    ),
    Case(
        "regression-outputs",
        "regression targets of another width than the outputs",
        'ftk.FineTuner("mobilenet_v2", task="regression", num_classes=1, weights=None, '
        'input_shape=(32, 32, 3), alpha=0.35).fit(x, np.zeros((24, 3)), verbose=0)',
        E.DataError,
        ValueError,
        ("The targets hold 3 value(s) per image but the model has 1 output(s)",
         "Pass num_classes=3"),
    ),
    Case(
        "sample-weights-shape",
        "sample weights that are not one number per image",
        "tuner.fit(tf.data.Dataset.from_tensor_slices((x, y, np.ones((24, 2)))).batch(8))",
        E.DataError,
        ValueError,
        ("must be one number per image", "received float64 of shape (None, 2) per batch"),
    ),
    # -- using the model: save_model, load, predict, evaluate, export --------------------
    Case(
        "class-names-count",
        "class names that do not fit the outputs",
        'ftk.save_model(model, "m.keras", class_names=["cats", "dogs"])',
        E.ConfigError,
        ValueError,
        ("class_names has 2 names", "has 3 outputs", "one name per output"),
    ),
    Case(
        "load-missing",
        "loading a model file that does not exist",
        'ftk.load("missing.keras")',
        E.WeightsNotFoundError,
        FileNotFoundError,
        ("No saved model at 'missing.keras'", "Check the path"),
    ),
    Case(
        "load-not-keras",
        "loading a file that is not a .keras archive",
        'ftk.load(tmp / "notes.keras")',
        E.ConfigError,
        ValueError,
        ("is not a Keras '.keras' file", "finetunekit.save_model"),
    ),
    Case(
        "predict-empty-folder",
        "predicting on a folder without images",
        "ftk.Classifier(model).predict(tmp)",
        E.DataError,
        ValueError,
        ("holds no images", "readable formats"),
    ),
    Case(
        "predict-top",
        "top below 1",
        "ftk.Classifier(model).predict(x, top=0)",
        E.ConfigError,
        ValueError,
        ("top must be a positive int", "top=3"),
    ),
    Case(
        "evaluate-labels",
        "evaluating on labels the model has no class for",
        "ftk.evaluate(model, (x, y + 5))",
        E.DataError,
        ValueError,
        ("class indices 0..2", "3-class model", "from 5 to 7"),
    ),
    Case(
        "predict-pixels",
        "predicting on images divided by 255",
        "ftk.Classifier(model).predict(x / 255)",
        E.DataError,
        ValueError,
        ("within [0, 1]", "x * 255"),
    ),
    Case(
        "evaluate-pixels",
        "evaluating on preprocessed images",
        "ftk.evaluate(model, (x / 127.5 - 1, y))",
        E.DataError,
        ValueError,
        ("negative", "raw 0-255 pixels"),
    ),
    Case(
        "export-format",
        "an unknown export format",
        'ftk.export(model, "m.tflite", format="onnx")',
        E.ConfigError,
        ValueError,
        ("Unknown export format 'onnx'", "'litert', 'saved_model'"),
    ),
    Case(
        "export-int8-no-data",
        "int8 quantization without representative data",
        'ftk.export(model, "m.tflite", quantize="int8")',
        E.ConfigError,
        ValueError,
        ("needs representative_data", "calibrate the activation ranges"),
    ),
    Case(
        "export-suffix",
        "a LiteRT target that is not a .tflite file",
        'ftk.export(model, "m.lite")',
        E.ConfigError,
        ValueError,
        ("is a '.tflite' file", "'m.tflite'"),
    ),
    Case(
        "output-unwritable",
        "a file written where it cannot be",
        'ftk.export(model, tmp / "notes.keras" / "m.tflite")',
        E.OutputPathError,
        OSError,
        ("Cannot write '", "notes.keras/m.tflite' (", "Pass a path in a folder you can write to"),
    ),
    Case(
        "int8-scaled-calibration",
        "int8 calibration images divided by 255",
        'ftk.export(model, "q.tflite", quantize="int8", representative_data=x / 255)',
        E.DataError,
        ValueError,
        ("representative_data: every pixel value is within [0, 1]", "Pass raw 0-255 pixels"),
    ),
    Case(
        "predict-a-dataset",
        "a tf.data.Dataset passed to predict",
        "ftk.Classifier(model).predict(batches(x, y))",
        E.ArgumentTypeError,
        TypeError,
        ("not a tf.data.Dataset", "finetunekit.evaluate(model, ds)"),
    ),
    # -- rank_bases ---------------------------------------------------------------------
    Case(
        "rank-one-candidate",
        "fewer than two candidates to rank",
        'ftk.rank_bases((x, y), ["mobilenet_v2"])',
        E.ConfigError,
        ValueError,
        ("needs at least two", "'mobilenet_v2'"),
    ),
    Case(
        "rank-unknown-name",
        "unknown base name among the candidates",
        'ftk.rank_bases((x, y), ["mobilenet_v2", "mobilenet_v5"])',
        E.UnknownBaseError,
        ValueError,
        ("Unknown base 'mobilenet_v5'", "Did you mean 'mobilenet_v2'"),
    ),
    Case(
        "rank-weights-mapping",
        "weights mapping naming no candidate",
        'ftk.rank_bases((x, y), ["mobilenet_v2", "mobilenet"], weights={"resnet50": None})',
        E.ConfigError,
        ValueError,
        ("weights names 'resnet50'", "not among the candidates", "Key the mapping"),
    ),
    Case(
        "rank-one-class",
        "data of one class only, to rank on",
        'ftk.rank_bases((x, np.zeros(24)), ["mobilenet_v2", "mobilenet"])',
        E.DataError,
        ValueError,
        ("All 24 images are of one class", "at least two classes"),
    ),
    Case(
        "rank-few-images",
        "too few images of a class for k-NN",
        'ftk.rank_bases((x[:4], y[:4]), ["mobilenet_v2", "mobilenet"])',
        E.DataError,
        ValueError,
        ("needs at least 2 images of every class", "class 1: 1", "Add images"),
    ),
    Case(
        "rank-scaled-pixels",
        "images divided by 255 to rank on",
        'ftk.rank_bases((x / 255, y), ["mobilenet_v2", "mobilenet"])',
        E.DataError,
        ValueError,
        ("data: every pixel value is within [0, 1]", "Pass raw 0-255 pixels"),
    ),
    Case(
        "rank-not-images",
        "a candidate that does not take images",
        'ftk.rank_bases((x, y), {"a": base, "b": keras.Sequential([keras.Input((10,)), '
        'keras.layers.Dense(3)])})',
        E.ModelStructureError,
        ValueError,
        ("takes inputs of shape (None, 10), not images", "(batch, height, width, 3)"),
    ),
    Case(
        "rank-four-channels",
        "a candidate of 4-channel images",
        'ftk.rank_bases((x, y), {"a": base, "b": keras.Sequential([keras.Input((32, 32, 4)), '
        'keras.layers.Conv2D(2, 1)], name="four")})',
        E.ModelStructureError,
        ValueError,
        ("'four' takes images of 4 channels", "RGB or grayscale (1-channel) images only"),
    ),
]


class Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__(name="my_model")
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


_SHARED: dict[str, Any] = {}


def _shared(name: str) -> Any:
    """Bases are built once (and lazily: most cases need none)."""
    if name not in _SHARED:
        shape = (32, 32, 3) if name == "base" else (None, None, 3)
        _SHARED[name] = ftk.load_base("mobilenet_v2", weights=None, input_shape=shape, alpha=0.35)
    return _SHARED[name]


def batches(x: Any, y: Any, size: int = 8) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(size)


def named(x: Any, y: Any, class_names: list[str]) -> tf.data.Dataset:
    dataset = batches(x, y)
    dataset.class_names = class_names
    return dataset


def case_needs(example: str) -> str:
    return next((case.needs for case in CASES if case.example == example), "")


def namespace(example: str, tmp: Path) -> dict[str, Any]:
    """The names the examples use (described at the top of docs/bad-inputs.md)."""
    rng = np.random.default_rng(0)
    tiny = dict(weights=None, input_shape=(32, 32, 3), alpha=0.35)
    ns: dict[str, Any] = dict(ftk=ftk, np=np, tf=tf, keras=keras, tmp=tmp, weights_05=WEIGHTS_05)
    ns["x"] = rng.uniform(0, 255, size=(24, 32, 32, 3)).astype("float32")
    ns["y"] = np.arange(24) % 3
    ns["tuner"] = ftk.FineTuner("mobilenet_v2", num_classes=3, **tiny)
    ns["binary_tuner"] = ftk.FineTuner("mobilenet_v2", task="binary", **tiny)
    ns["regression_tuner"] = ftk.FineTuner("mobilenet_v2", task="regression", **tiny)
    ns["batches"] = batches
    ns["named"] = named
    ns["mixed_sizes"] = tf.data.Dataset.from_generator(
        lambda: ((np.full((s, s, 3), 99.0, "float32"), 0) for s in (32, 40)),
        output_signature=(tf.TensorSpec((None, None, 3)), tf.TensorSpec((), tf.int64)),
    )
    for folder, hidden in (("photos", True), ("flowers", False)):
        if folder not in example:
            continue
        for name in ("roses", "tulips", "roses/.ipynb_checkpoints")[: 3 if hidden else 2]:
            (tmp / folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                image = tf.io.encode_png(ns["x"][i].astype("uint8")).numpy()
                (tmp / folder / name / f"{i}.png").write_bytes(image)
    if "cut.h5" in example or case_needs(example) == "broken-cache":
        _shared("base").save_weights(tmp / "w.weights.h5")
        (tmp / "cut.h5").write_bytes((tmp / "w.weights.h5").read_bytes()[:5000])
    (tmp / "m.h5").write_bytes(b"PK\x03\x04" + bytes(60))  # a zip archive's start
    (tmp / "cut.keras").write_bytes(b"PK\x03\x04" + bytes(60))
    ns["subclassed"] = Subclassed()
    ns["unbuilt"] = keras.Sequential([keras.layers.Dense(2)])
    (tmp / "notes.keras").write_text("not a model")
    if re.search(r"\bbase\b|\bmodel\b", example):
        ns["base"] = _shared("base")
        ns["model"] = ftk.add_head(ns["base"], 3)  # a fresh head: fully trainable, uncompiled
        ns["base"].trainable = True
    if "any_size_base" in example:
        ns["any_size_base"] = _shared("any_size_base")
    return ns


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Keras' download fails the way it does without network."""
    from keras.src.utils import file_utils

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise Exception(OFFLINE)

    saved = file_utils.get_file
    file_utils.get_file = refuse
    try:
        yield
    finally:
        file_utils.get_file = saved


@contextlib.contextmanager
def broken_cache(tmp: Path) -> Iterator[None]:
    """A Keras cache folder in `tmp` holding a cut-short copy of the weights asked for."""
    from keras.src.backend import config as keras_config

    (tmp / "keras" / "models").mkdir(parents=True, exist_ok=True)
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5"
    (tmp / "keras" / "models" / name).write_bytes((tmp / "cut.h5").read_bytes())
    saved = keras_config._KERAS_DIR
    keras_config._KERAS_DIR = str(tmp / "keras")
    try:
        yield
    finally:
        keras_config._KERAS_DIR = saved


def run_case(case: Case, tmp: Path) -> Exception:
    ns = namespace(case.example, tmp)
    context: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if case.needs == "offline":
        context = offline()
    elif case.needs == "broken-cache":
        context = broken_cache(tmp)
    try:
        with context:
            exec(case.example, ns)
    except Exception as exc:  # the test decides what is acceptable
        return exc
    raise AssertionError(f"{case.example} raised nothing")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch) -> None:
    if case.needs == "weights" and not WEIGHTS_05.exists():
        pytest.skip(f"{WEIGHTS_05} not found (../shared/data absent)")
    monkeypatch.chdir(tmp_path)  # relative paths in the examples stay in tmp_path
    exc = run_case(case, tmp_path)
    assert isinstance(exc, ftk.FinetuneKitError), (
        f"a raw {type(exc).__module__}.{type(exc).__name__} escaped: {exc}"
    )
    assert type(exc) is case.exc, f"{type(exc).__name__} instead of {case.exc.__name__}"
    assert isinstance(exc, case.builtin)
    for phrase in case.says:
        assert phrase in str(exc), f"{phrase!r} not in: {exc}"


def test_every_exception_type_derives_from_the_base_and_a_builtin():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, ftk.FinetuneKitError)
        if cls is not ftk.FinetuneKitError:
            builtins_ = [c for c in cls.__mro__ if c.__module__ == "builtins"]
            assert set(builtins_) - {Exception, BaseException, object}, name


def test_the_table_has_one_row_per_case():
    assert len(CASES) >= 20
    assert len({case.id for case in CASES}) == len(CASES)
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    for case in CASES:
        example = f"`{case.example}`"
        matching = [row for row in rows if example in row]
        assert len(matching) == 1, f"docs/bad-inputs.md has no row for {case.id}: {example}"
        cells = [cell.strip() for cell in matching[0].strip("|").split(" | ")]
        assert cells[2] == f"`{case.exc.__name__}`", case.id
        assert cells[3] == f"`{case.builtin.__name__}`", case.id


# -- the table ----------------------------------------------------------------------------

HEADER = """# Bad inputs

Every bad input finetunekit recognises, the exception it raises and what the
message says. Every exception derives from `finetunekit.FinetuneKitError` and
also from the builtin in the fourth column, so both
`except finetunekit.FinetuneKitError` and, say, `except ValueError` catch it.
No raw TensorFlow or Keras exception escapes for these inputs:
`tests/test_bad_inputs.py` runs every example below and checks the class, the
builtin and the message.

In the examples, `ftk` is `finetunekit`;
`tuner = ftk.FineTuner("mobilenet_v2", num_classes=3, weights=None, input_shape=(32, 32, 3),
alpha=0.35)` (and `binary_tuner` the same with `task="binary"`);
`base = ftk.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35)`,
`any_size_base` the same with `input_shape=(None, None, 3)`, and
`model = ftk.add_head(base, 3)`; `x` holds 24 random 32x32 RGB images and
`y = np.arange(24) % 3`; `tmp` is a folder holding `notes.keras`, a text file;
`weights_05` is the MobileNetV2 alpha 0.5 ImageNet weights file; `subclassed` is
an instance of a `keras.Model` subclass and `unbuilt` is
`keras.Sequential([keras.layers.Dense(2)])`; `regression_tuner` is `tuner` with
`task="regression"`; `batches(x, y, n=8)` is
`tf.data.Dataset.from_tensor_slices((x, y)).batch(n)` and `named(x, y, names)` the
same carrying `class_names`; `mixed_sizes` is an unbatched dataset of a 32x32 and a
40x40 image; `tmp / "photos"` holds class folders `roses` and `tulips`, and
`roses/.ipynb_checkpoints` with copies; `tmp / "flowers"` the same two class folders,
nothing hidden; `tmp / "cut.h5"` is a weights file cut short,
`tmp / "m.h5"` and `tmp / "cut.keras"` start like a zip archive and end there. The
download failure is shown with Keras' download made to fail as it does offline; the
broken cache with a Keras cache folder holding a cut-short copy of the file asked for.

Generated by `python tests/test_bad_inputs.py > docs/bad-inputs.md`.

| bad input | example | exception (class) | builtin it also is | message says |
|---|---|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table() -> str:
    lines = [HEADER.rstrip("\n")]
    cwd = os.getcwd()
    try:
        for case in CASES:
            # A folder of its own per case, as under pytest; training progress stays out.
            with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
                tmp = Path(folder)
                os.chdir(tmp)
                exc = run_case(case, tmp)
                os.chdir(cwd)
            message = str(exc).replace(str(tmp), "tmp").replace(str(WEIGHTS_05), "weights_05")
            lines.append(
                f"| {_cell(case.what)} | `{case.example}` | `{type(exc).__name__}` "
                f"| `{case.builtin.__name__}` | {_cell(message)} |"
            )
    finally:
        os.chdir(cwd)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stdout.write(table())
