"""Feedback: correction setpoints, safety interlocks, publication to motors."""

from .actuator import (
    ActuatorError,
    MoveTimeoutError,
    OphydAsyncActuator,
    PublishOnlyActuator,
    StageActuator,
)
from .interlocks import REASONS, AxisLimits, Decision, InterlockConfig, Interlocks
from .loop import FeedbackController, FeedbackResult
from .publisher import DECISION_TOPIC, SETPOINT_TOPIC, SetpointPublisher
from .setpoint import DetectorMapping, Setpoint, make_setpoint

__all__ = [
    "DECISION_TOPIC",
    "REASONS",
    "SETPOINT_TOPIC",
    "ActuatorError",
    "AxisLimits",
    "Decision",
    "DetectorMapping",
    "FeedbackController",
    "FeedbackResult",
    "InterlockConfig",
    "Interlocks",
    "MoveTimeoutError",
    "OphydAsyncActuator",
    "PublishOnlyActuator",
    "Setpoint",
    "SetpointPublisher",
    "StageActuator",
    "make_setpoint",
]
