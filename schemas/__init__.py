"""Message contracts of sensorloop: one definition per topic, JSON via orjson."""

from schemas.base import SCHEMA_VERSION, SchemaError, decode_json, encode_json
from schemas.records import (
    DeadLetter,
    DriftEvent,
    Forecast,
    Label,
    ModelSnapshot,
    Prediction,
    ReviewRequest,
    SensorReading,
    WindowSample,
    check_class_name,
)
from schemas.topics import Topics

__all__ = [
    "SCHEMA_VERSION", "SchemaError", "check_class_name", "decode_json", "encode_json", "DeadLetter", "DriftEvent", "Forecast", "Label",
    "ModelSnapshot", "Prediction", "ReviewRequest", "SensorReading", "Topics", "WindowSample",
]
