"""A gordo_core data provider that serves the demo's synthetic sensor process to gordo's builder.

The demo models must learn the same process that the demo feeder later sends to them, so
instead of gordo's ``RandomDataProvider`` (uniform noise) the builder reads
:func:`latigo.demo.signals.signal`, without anomalies, at one sample a minute, and resamples
it to the model's resolution as it would real sensor data.

This module runs only inside the Gordo virtualenv (it imports gordo_core): model configs
name it by its dotted path ``latigo.demo.gordo_provider.SignalDataProvider`` in
``dataset.data_provider.type``, and ``latigo.demo.gordo`` runs the builder with the repository
root on ``PYTHONPATH``. Latigo itself never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pandas as pd
from gordo_core.data_providers.base import GordoBaseDataProvider
from gordo_core.sensor_tag import Tag, extract_tag_name
from gordo_core.utils import capture_args

from latigo.demo import signals


class SignalDataProvider(GordoBaseDataProvider):
    """Serves any tag from the clean synthetic process of :mod:`latigo.demo.signals`."""

    @capture_args
    def __init__(self, step_seconds: int = 60):
        """``step_seconds``: spacing of the raw samples handed to gordo before it resamples."""
        self.step = timedelta(seconds=step_seconds)

    def can_handle_tag(self, tag: Tag) -> bool:
        """Every tag name has a synthetic signal."""
        return True

    def load_series(
        self,
        train_start_date: datetime,
        train_end_date: datetime,
        tag_list: list[Tag],
        dry_run: bool | None = False,
        **kwargs,
    ) -> Iterable[tuple[pd.Series, Tag]]:
        """One series per tag over ``[train_start_date, train_end_date)``, named after the tag."""
        if dry_run:
            raise NotImplementedError("Dry run for SignalDataProvider is not implemented")
        names = [extract_tag_name(tag) for tag in tag_list]
        frame = signals.signal(names, train_start_date, train_end_date, step=self.step)
        for name, tag in zip(names, tag_list):
            yield frame[name].rename(name), tag
