"""The demo Gordo models, as plain gordo machine configs.

One place defines which models the local Gordo server has, which tags each one reads and
how it is built, so the builder (``latigo.demo.gordo``), the demo feeder and the tests all
agree. The configs are the dicts that ``gordo build`` takes as YAML (JSON is YAML).

Every model is a ``DiffBasedAnomalyDetector`` over a scikit-learn pipeline, so the server
answers the anomaly endpoint with thresholds and every anomaly column, and no TensorFlow
is needed. They are trained on the clean synthetic process of ``latigo.demo.signals``,
served to gordo's builder by ``latigo.demo.gordo_provider``.
"""

from __future__ import annotations

import copy

# gordo project of the demo models
DEMO_PROJECT = "demo"
# model resolution, as written in real gordo configs (pandas offset alias)
RESOLUTION = "10T"
# training window: fixed, so builds are reproducible
TRAIN_START = "2026-01-01T00:00:00+00:00"
TRAIN_END = "2026-02-01T00:00:00+00:00"
# dotted path of the data provider that serves the synthetic process to gordo's builder
DATA_PROVIDER = "latigo.demo.gordo_provider.SignalDataProvider"

# model name -> its tags; the loop numbers 01-03 of each machine get the demo's anomalies
MODEL_TAGS: dict[str, list[str]] = {
    "pump-1": [
        "PUMP1-PT-101",  # discharge pressure
        "PUMP1-FT-102",  # flow
        "PUMP1-TT-103",  # bearing temperature
    ],
    "compressor-1": [
        "COMP1-PT-201",  # suction pressure
        "COMP1-PT-202",  # discharge pressure
        "COMP1-TT-203",  # suction temperature
        "COMP1-TT-204",  # discharge temperature
        "COMP1-FT-205",  # flow
        "COMP1-ST-206",  # shaft speed
        "COMP1-VT-207",  # shaft vibration
        "COMP1-JT-208",  # driver power
    ],
    "turbine-1": [
        "TURB1-ST-301",  # shaft speed
        "TURB1-JT-302",  # generator power
        "TURB1-TT-303",  # exhaust temperature
        "TURB1-PT-304",  # compressor discharge pressure
        "TURB1-TT-305",  # compressor discharge temperature
        "TURB1-PT-306",  # fuel gas pressure
        "TURB1-FT-307",  # fuel gas flow
        "TURB1-TT-308",  # lube oil temperature
        "TURB1-PT-309",  # lube oil pressure
        "TURB1-VT-310",  # bearing 1 vibration
        "TURB1-VT-311",  # bearing 2 vibration
        "TURB1-VT-312",  # gearbox vibration
        "TURB1-TT-313",  # bearing 1 temperature
        "TURB1-TT-314",  # bearing 2 temperature
        "TURB1-PDT-315",  # inlet filter differential pressure
        "TURB1-ZT-316",  # inlet guide vane position
        "TURB1-ZT-317",  # fuel valve position
        "TURB1-IT-318",  # generator current
        "TURB1-TT-319",  # generator winding temperature
        "TURB1-LT-320",  # lube oil tank level
    ],
}

# the estimator of every demo model: anomaly detector over a PCA reconstruction
MODEL_SPEC = {
    "gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector": {
        "scaler": "sklearn.preprocessing.MinMaxScaler",
        "base_estimator": {
            "sklearn.pipeline.Pipeline": {
                "steps": [
                    "sklearn.preprocessing.MinMaxScaler",
                    {"sklearn.decomposition.PCA": {"n_components": 2}},
                    {
                        "sklearn.multioutput.MultiOutputRegressor": {
                            "estimator": "sklearn.linear_model.LinearRegression"
                        }
                    },
                ]
            }
        },
    }
}


def _config(name: str, tags: list[str]) -> dict:
    """The gordo machine config of one demo model."""
    return {
        "name": name,
        "project_name": DEMO_PROJECT,
        "dataset": {
            "type": "TimeSeriesDataset",
            "tag_list": list(tags),
            "target_tag_list": list(tags),
            "train_start_date": TRAIN_START,
            "train_end_date": TRAIN_END,
            "resolution": RESOLUTION,
            "data_provider": {"type": DATA_PROVIDER},
        },
        "model": copy.deepcopy(MODEL_SPEC),
    }


def demo_models() -> list[dict]:
    """Fresh copies of the gordo machine configs of all demo models."""
    return [_config(name, tags) for name, tags in MODEL_TAGS.items()]


def model_names() -> list[str]:
    """Names of the demo models, in definition order."""
    return list(MODEL_TAGS)


def tags_of(model_name: str) -> list[str]:
    """The tags (inputs and targets) of a demo model; KeyError for an unknown name."""
    try:
        return list(MODEL_TAGS[model_name])
    except KeyError:
        raise KeyError(f"no demo model {model_name!r}; known: {', '.join(MODEL_TAGS)}") from None
