"""Errors a user can act on.

Every failure that reaches a person is one of these, carrying a message that names the file, the
rule or the service involved; the CLI prints the message instead of a traceback.
"""


class SupportflowError(Exception):
    """Base class: an expected failure with a message meant for a person."""


class SettingsError(SupportflowError):
    """A setting (an environment variable or the .env file) holds a value the project cannot run with."""


class IngestError(SupportflowError):
    """A source file cannot be read at all (missing, empty, wrong shape)."""


class ContractError(SupportflowError):
    """A batch breaks its data contract as a whole (a missing column, most rows failing)."""


class LakeUnavailableError(SupportflowError):
    """The lake's storage (a local folder or an S3 endpoint) cannot be reached."""


class KnowledgeBaseError(SupportflowError):
    """A knowledge-base build or search cannot go on (no usable document, a smoke query that fails, a search service down)."""


class BaseModelError(SupportflowError):
    """The base model to fine-tune is missing, corrupt or of an architecture that cannot be used."""


class TrainingDataError(SupportflowError):
    """The training snapshot cannot train a classifier (too few intents or examples, unknown labels)."""


class TrainingDeviceError(SupportflowError):
    """The settings ask to train where this machine cannot (SUPPORTFLOW_TRAIN_DEVICE cuda without a CUDA GPU)."""


class RegistryError(SupportflowError):
    """The MLflow tracking store or model registry cannot be reached or holds no such model/version."""


class DriftReferenceError(SupportflowError):
    """The model that served the turns has no training reference to compare them with."""
