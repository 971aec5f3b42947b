"""Providers: every external system behind a small interface, one backend per module.

``models/`` (ModelInformationProvider, ModelExecutionProvider), ``sensors/``
(SensorInformationProvider, SensorDataProvider) and ``predictions/``
(PredictionStorageProvider). ``latigo.components`` builds them from the config's ``type``.
"""
