import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tiergen.common.v1 import common_pb2 as _common_pb2
from tiergen.ledger.v1 import ledger_pb2 as _ledger_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Fidelity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIDELITY_UNSPECIFIED: _ClassVar[Fidelity]
    FIDELITY_DRAFT: _ClassVar[Fidelity]
    FIDELITY_BALANCED: _ClassVar[Fidelity]
    FIDELITY_HIGH: _ClassVar[Fidelity]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_GENERATE: _ClassVar[JobKind]
    JOB_KIND_PROMOTE: _ClassVar[JobKind]
    JOB_KIND_UPSCALE: _ClassVar[JobKind]
    JOB_KIND_EDIT: _ClassVar[JobKind]

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_QUEUED: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_SUCCEEDED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]

class WebhookState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEBHOOK_STATE_UNSPECIFIED: _ClassVar[WebhookState]
    WEBHOOK_STATE_ACTIVE: _ClassVar[WebhookState]
    WEBHOOK_STATE_PAUSED: _ClassVar[WebhookState]

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATE_UNSPECIFIED: _ClassVar[DeliveryState]
    DELIVERY_STATE_PENDING: _ClassVar[DeliveryState]
    DELIVERY_STATE_DELIVERED: _ClassVar[DeliveryState]
    DELIVERY_STATE_FAILED: _ClassVar[DeliveryState]
FIDELITY_UNSPECIFIED: Fidelity
FIDELITY_DRAFT: Fidelity
FIDELITY_BALANCED: Fidelity
FIDELITY_HIGH: Fidelity
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_GENERATE: JobKind
JOB_KIND_PROMOTE: JobKind
JOB_KIND_UPSCALE: JobKind
JOB_KIND_EDIT: JobKind
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_QUEUED: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_SUCCEEDED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus
WEBHOOK_STATE_UNSPECIFIED: WebhookState
WEBHOOK_STATE_ACTIVE: WebhookState
WEBHOOK_STATE_PAUSED: WebhookState
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DELIVERY_STATE_PENDING: DeliveryState
DELIVERY_STATE_DELIVERED: DeliveryState
DELIVERY_STATE_FAILED: DeliveryState

class GenerationSpec(_message.Message):
    __slots__ = ("prompt", "tier", "stage", "resolution", "n", "seed", "allow_downgrade", "fidelity")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ALLOW_DOWNGRADE_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    tier: str
    stage: _common_pb2.Stage
    resolution: _common_pb2.Resolution
    n: int
    seed: int
    allow_downgrade: bool
    fidelity: Fidelity
    def __init__(self, prompt: _Optional[str] = ..., tier: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., resolution: _Optional[_Union[_common_pb2.Resolution, _Mapping]] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ..., allow_downgrade: _Optional[bool] = ..., fidelity: _Optional[_Union[Fidelity, str]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("tier", "resolution", "width", "height", "unit_cost", "n", "total_cost", "reasons", "downgraded")
    TIER_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    UNIT_COST_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DOWNGRADED_FIELD_NUMBER: _ClassVar[int]
    tier: str
    resolution: _common_pb2.Resolution
    width: int
    height: int
    unit_cost: int
    n: int
    total_cost: int
    reasons: _containers.RepeatedScalarFieldContainer[str]
    downgraded: bool
    def __init__(self, tier: _Optional[str] = ..., resolution: _Optional[_Union[_common_pb2.Resolution, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., unit_cost: _Optional[int] = ..., n: _Optional[int] = ..., total_cost: _Optional[int] = ..., reasons: _Optional[_Iterable[str]] = ..., downgraded: _Optional[bool] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    message: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "batch_id", "account_id", "kind", "status", "tier", "stage", "prompt", "seed", "variation", "resolution", "width", "height", "quoted_cost", "cost", "parent_job_id", "child_job_ids", "asset", "reasons", "strength", "drift", "upscale_factor", "upscale_method", "error", "create_time", "start_time", "finish_time", "trace_id", "shortlisted")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VARIATION_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    QUOTED_COST_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PARENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_METHOD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SHORTLISTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_id: str
    account_id: str
    kind: JobKind
    status: JobStatus
    tier: str
    stage: _common_pb2.Stage
    prompt: str
    seed: int
    variation: int
    resolution: _common_pb2.Resolution
    width: int
    height: int
    quoted_cost: int
    cost: int
    parent_job_id: str
    child_job_ids: _containers.RepeatedScalarFieldContainer[str]
    asset: _common_pb2.AssetRef
    reasons: _containers.RepeatedScalarFieldContainer[str]
    strength: float
    drift: float
    upscale_factor: float
    upscale_method: _common_pb2.UpscaleMethod
    error: JobError
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    trace_id: str
    shortlisted: bool
    def __init__(self, job_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., account_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., status: _Optional[_Union[JobStatus, str]] = ..., tier: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., prompt: _Optional[str] = ..., seed: _Optional[int] = ..., variation: _Optional[int] = ..., resolution: _Optional[_Union[_common_pb2.Resolution, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., quoted_cost: _Optional[int] = ..., cost: _Optional[int] = ..., parent_job_id: _Optional[str] = ..., child_job_ids: _Optional[_Iterable[str]] = ..., asset: _Optional[_Union[_common_pb2.AssetRef, _Mapping]] = ..., reasons: _Optional[_Iterable[str]] = ..., strength: _Optional[float] = ..., drift: _Optional[float] = ..., upscale_factor: _Optional[float] = ..., upscale_method: _Optional[_Union[_common_pb2.UpscaleMethod, str]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ..., shortlisted: _Optional[bool] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("job_id", "progress")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    progress: _common_pb2.Progress
    def __init__(self, job_id: _Optional[str] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "decision", "jobs", "replayed", "detached", "webhook_id")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    decision: Decision
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    replayed: bool
    detached: bool
    webhook_id: str
    def __init__(self, batch_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., replayed: _Optional[bool] = ..., detached: _Optional[bool] = ..., webhook_id: _Optional[str] = ...) -> None: ...

class QuoteRequest(_message.Message):
    __slots__ = ("account_id", "spec")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    spec: GenerationSpec
    def __init__(self, account_id: _Optional[str] = ..., spec: _Optional[_Union[GenerationSpec, _Mapping]] = ...) -> None: ...

class QuoteResponse(_message.Message):
    __slots__ = ("decision", "available", "affordable", "shortfall")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    AFFORDABLE_FIELD_NUMBER: _ClassVar[int]
    SHORTFALL_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    available: int
    affordable: bool
    shortfall: int
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., available: _Optional[int] = ..., affordable: _Optional[bool] = ..., shortfall: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key", "spec", "detach", "webhook_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    spec: GenerationSpec
    detach: bool
    webhook_id: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., spec: _Optional[_Union[GenerationSpec, _Mapping]] = ..., detach: _Optional[bool] = ..., webhook_id: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("batch", "progress", "job")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    progress: JobProgress
    job: Job
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key", "job_id", "tier", "resolution", "prompt", "prompt_addition", "strength", "seed", "detach", "webhook_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ADDITION_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    job_id: str
    tier: str
    resolution: _common_pb2.Resolution
    prompt: str
    prompt_addition: str
    strength: float
    seed: int
    detach: bool
    webhook_id: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., job_id: _Optional[str] = ..., tier: _Optional[str] = ..., resolution: _Optional[_Union[_common_pb2.Resolution, _Mapping]] = ..., prompt: _Optional[str] = ..., prompt_addition: _Optional[str] = ..., strength: _Optional[float] = ..., seed: _Optional[int] = ..., detach: _Optional[bool] = ..., webhook_id: _Optional[str] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("accepted", "progress", "job")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    accepted: Job
    progress: JobProgress
    job: Job
    def __init__(self, accepted: _Optional[_Union[Job, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class UpscaleRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key", "job_id", "factor", "method", "output_format", "quality", "detach", "webhook_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    job_id: str
    factor: float
    method: _common_pb2.UpscaleMethod
    output_format: _common_pb2.ImageFormat
    quality: int
    detach: bool
    webhook_id: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., job_id: _Optional[str] = ..., factor: _Optional[float] = ..., method: _Optional[_Union[_common_pb2.UpscaleMethod, str]] = ..., output_format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., quality: _Optional[int] = ..., detach: _Optional[bool] = ..., webhook_id: _Optional[str] = ...) -> None: ...

class UpscaleResponse(_message.Message):
    __slots__ = ("accepted", "progress", "job")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    accepted: Job
    progress: JobProgress
    job: Job
    def __init__(self, accepted: _Optional[_Union[Job, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key", "job_id", "prompt", "mask", "seed", "detach", "webhook_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    job_id: str
    prompt: str
    mask: bytes
    seed: int
    detach: bool
    webhook_id: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., job_id: _Optional[str] = ..., prompt: _Optional[str] = ..., mask: _Optional[bytes] = ..., seed: _Optional[int] = ..., detach: _Optional[bool] = ..., webhook_id: _Optional[str] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("accepted", "progress", "job")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    accepted: Job
    progress: JobProgress
    job: Job
    def __init__(self, accepted: _Optional[_Union[Job, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class SetShortlistRequest(_message.Message):
    __slots__ = ("account_id", "job_id", "shortlisted")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHORTLISTED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    job_id: str
    shortlisted: bool
    def __init__(self, account_id: _Optional[str] = ..., job_id: _Optional[str] = ..., shortlisted: _Optional[bool] = ...) -> None: ...

class SetShortlistResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("account_id", "job_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    job_id: str
    def __init__(self, account_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("account_id", "stage", "tier", "status", "kind", "batch_id", "parent_job_id", "page_size", "page_token", "shortlisted")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHORTLISTED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    stage: _common_pb2.Stage
    tier: str
    status: JobStatus
    kind: JobKind
    batch_id: str
    parent_job_id: str
    page_size: int
    page_token: str
    shortlisted: bool
    def __init__(self, account_id: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., tier: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., kind: _Optional[_Union[JobKind, str]] = ..., batch_id: _Optional[str] = ..., parent_job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., shortlisted: _Optional[bool] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("account_id", "job_id", "batch_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    job_id: str
    batch_id: str
    def __init__(self, account_id: _Optional[str] = ..., job_id: _Optional[str] = ..., batch_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class GetAssetRequest(_message.Message):
    __slots__ = ("account_id", "asset_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    asset_id: str
    def __init__(self, account_id: _Optional[str] = ..., asset_id: _Optional[str] = ...) -> None: ...

class GetAssetResponse(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ImageInfo
    chunk: _common_pb2.ImageChunk
    def __init__(self, info: _Optional[_Union[_common_pb2.ImageInfo, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.ImageChunk, _Mapping]] = ...) -> None: ...

class OpenAccountRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class OpenAccountResponse(_message.Message):
    __slots__ = ("balance", "granted", "replayed", "outcome")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    balance: _ledger_pb2.Balance
    granted: int
    replayed: bool
    outcome: _ledger_pb2.GrantOutcome
    def __init__(self, balance: _Optional[_Union[_ledger_pb2.Balance, _Mapping]] = ..., granted: _Optional[int] = ..., replayed: _Optional[bool] = ..., outcome: _Optional[_Union[_ledger_pb2.GrantOutcome, str]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("balance",)
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    balance: _ledger_pb2.Balance
    def __init__(self, balance: _Optional[_Union[_ledger_pb2.Balance, _Mapping]] = ...) -> None: ...

class CheckInRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("balance", "granted", "iso_week", "cap_reached", "replayed", "outcome")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    ISO_WEEK_FIELD_NUMBER: _ClassVar[int]
    CAP_REACHED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    balance: _ledger_pb2.Balance
    granted: int
    iso_week: str
    cap_reached: bool
    replayed: bool
    outcome: _ledger_pb2.GrantOutcome
    def __init__(self, balance: _Optional[_Union[_ledger_pb2.Balance, _Mapping]] = ..., granted: _Optional[int] = ..., iso_week: _Optional[str] = ..., cap_reached: _Optional[bool] = ..., replayed: _Optional[bool] = ..., outcome: _Optional[_Union[_ledger_pb2.GrantOutcome, str]] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("account_id", "amount", "kind", "reason", "idempotency_key")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    kind: _ledger_pb2.GrantKind
    reason: str
    idempotency_key: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., kind: _Optional[_Union[_ledger_pb2.GrantKind, str]] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GrantResponse(_message.Message):
    __slots__ = ("entry", "balance", "replayed")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    entry: _ledger_pb2.Entry
    balance: _ledger_pb2.Balance
    replayed: bool
    def __init__(self, entry: _Optional[_Union[_ledger_pb2.Entry, _Mapping]] = ..., balance: _Optional[_Union[_ledger_pb2.Balance, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("prefix", "tenant", "scopes", "name", "create_time", "expire_time", "revoke_time", "replaces")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    tenant: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    name: str
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    replaces: str
    def __init__(self, prefix: _Optional[str] = ..., tenant: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replaces: _Optional[str] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("scopes", "name", "ttl_seconds")
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    name: str
    ttl_seconds: int
    def __init__(self, scopes: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "secret")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    secret: str
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys",)
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RotateApiKeyRequest(_message.Message):
    __slots__ = ("prefix", "grace_seconds")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    grace_seconds: int
    def __init__(self, prefix: _Optional[str] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class RotateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "secret", "replaced")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    secret: str
    replaced: ApiKey
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ..., replaced: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class Webhook(_message.Message):
    __slots__ = ("webhook_id", "url", "events", "description", "credits_low_threshold", "state", "pause_reason", "consecutive_failures", "create_time", "update_time", "pause_time", "secret_rotation_expire_time")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PAUSE_TIME_FIELD_NUMBER: _ClassVar[int]
    SECRET_ROTATION_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    url: str
    events: _containers.RepeatedScalarFieldContainer[str]
    description: str
    credits_low_threshold: int
    state: WebhookState
    pause_reason: str
    consecutive_failures: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    pause_time: _timestamp_pb2.Timestamp
    secret_rotation_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, webhook_id: _Optional[str] = ..., url: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., credits_low_threshold: _Optional[int] = ..., state: _Optional[_Union[WebhookState, str]] = ..., pause_reason: _Optional[str] = ..., consecutive_failures: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pause_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., secret_rotation_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("delivery_id", "webhook_id", "event_id", "event_type", "state", "attempts", "last_status_code", "last_error", "account_id", "batch_id", "job_id", "create_time", "last_attempt_time", "next_attempt_time", "finish_time")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    webhook_id: str
    event_id: str
    event_type: str
    state: DeliveryState
    attempts: int
    last_status_code: int
    last_error: str
    account_id: str
    batch_id: str
    job_id: str
    create_time: _timestamp_pb2.Timestamp
    last_attempt_time: _timestamp_pb2.Timestamp
    next_attempt_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    def __init__(self, delivery_id: _Optional[str] = ..., webhook_id: _Optional[str] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., attempts: _Optional[int] = ..., last_status_code: _Optional[int] = ..., last_error: _Optional[str] = ..., account_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., job_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateWebhookRequest(_message.Message):
    __slots__ = ("url", "events", "description", "credits_low_threshold")
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    url: str
    events: _containers.RepeatedScalarFieldContainer[str]
    description: str
    credits_low_threshold: int
    def __init__(self, url: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., credits_low_threshold: _Optional[int] = ...) -> None: ...

class CreateWebhookResponse(_message.Message):
    __slots__ = ("webhook", "secret")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    secret: str
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("webhooks",)
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedCompositeFieldContainer[Webhook]
    def __init__(self, webhooks: _Optional[_Iterable[_Union[Webhook, _Mapping]]] = ...) -> None: ...

class UpdateWebhookRequest(_message.Message):
    __slots__ = ("webhook_id", "url", "events", "description", "credits_low_threshold", "paused")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    url: str
    events: _containers.RepeatedScalarFieldContainer[str]
    description: str
    credits_low_threshold: int
    paused: bool
    def __init__(self, webhook_id: _Optional[str] = ..., url: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., credits_low_threshold: _Optional[int] = ..., paused: _Optional[bool] = ...) -> None: ...

class UpdateWebhookResponse(_message.Message):
    __slots__ = ("webhook",)
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ...) -> None: ...

class DeleteWebhookRequest(_message.Message):
    __slots__ = ("webhook_id",)
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    def __init__(self, webhook_id: _Optional[str] = ...) -> None: ...

class DeleteWebhookResponse(_message.Message):
    __slots__ = ("webhook",)
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ...) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("webhook_id", "grace_seconds")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    grace_seconds: int
    def __init__(self, webhook_id: _Optional[str] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class RotateWebhookSecretResponse(_message.Message):
    __slots__ = ("webhook", "secret", "previous_secret_expire_time")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    webhook: Webhook
    secret: str
    previous_secret_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, webhook: _Optional[_Union[Webhook, _Mapping]] = ..., secret: _Optional[str] = ..., previous_secret_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListWebhookDeliveriesRequest(_message.Message):
    __slots__ = ("webhook_id", "state", "page_size", "page_token")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    state: DeliveryState
    page_size: int
    page_token: str
    def __init__(self, webhook_id: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhookDeliveriesResponse(_message.Message):
    __slots__ = ("deliveries", "next_page_token")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    next_page_token: str
    def __init__(self, deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
