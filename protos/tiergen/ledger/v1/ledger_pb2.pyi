import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HoldStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_STATUS_UNSPECIFIED: _ClassVar[HoldStatus]
    HOLD_STATUS_OPEN: _ClassVar[HoldStatus]
    HOLD_STATUS_CAPTURED: _ClassVar[HoldStatus]
    HOLD_STATUS_RELEASED: _ClassVar[HoldStatus]
    HOLD_STATUS_EXPIRED: _ClassVar[HoldStatus]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_SIGNUP_BONUS: _ClassVar[EntryKind]
    ENTRY_KIND_CHECK_IN: _ClassVar[EntryKind]
    ENTRY_KIND_PURCHASE: _ClassVar[EntryKind]
    ENTRY_KIND_ADJUSTMENT: _ClassVar[EntryKind]
    ENTRY_KIND_RESERVE: _ClassVar[EntryKind]
    ENTRY_KIND_CAPTURE: _ClassVar[EntryKind]
    ENTRY_KIND_RELEASE: _ClassVar[EntryKind]
    ENTRY_KIND_EXPIRE: _ClassVar[EntryKind]

class GrantOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_OUTCOME_UNSPECIFIED: _ClassVar[GrantOutcome]
    GRANT_OUTCOME_GRANTED: _ClassVar[GrantOutcome]
    GRANT_OUTCOME_ALREADY_OPEN: _ClassVar[GrantOutcome]
    GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK: _ClassVar[GrantOutcome]

class GrantKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_KIND_UNSPECIFIED: _ClassVar[GrantKind]
    GRANT_KIND_PURCHASE: _ClassVar[GrantKind]
    GRANT_KIND_ADJUSTMENT: _ClassVar[GrantKind]
HOLD_STATUS_UNSPECIFIED: HoldStatus
HOLD_STATUS_OPEN: HoldStatus
HOLD_STATUS_CAPTURED: HoldStatus
HOLD_STATUS_RELEASED: HoldStatus
HOLD_STATUS_EXPIRED: HoldStatus
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_SIGNUP_BONUS: EntryKind
ENTRY_KIND_CHECK_IN: EntryKind
ENTRY_KIND_PURCHASE: EntryKind
ENTRY_KIND_ADJUSTMENT: EntryKind
ENTRY_KIND_RESERVE: EntryKind
ENTRY_KIND_CAPTURE: EntryKind
ENTRY_KIND_RELEASE: EntryKind
ENTRY_KIND_EXPIRE: EntryKind
GRANT_OUTCOME_UNSPECIFIED: GrantOutcome
GRANT_OUTCOME_GRANTED: GrantOutcome
GRANT_OUTCOME_ALREADY_OPEN: GrantOutcome
GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK: GrantOutcome
GRANT_KIND_UNSPECIFIED: GrantKind
GRANT_KIND_PURCHASE: GrantKind
GRANT_KIND_ADJUSTMENT: GrantKind

class Balance(_message.Message):
    __slots__ = ("account_id", "available", "held", "total", "promotional_granted", "promotional_cap", "purchased", "consumed", "tenant")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONAL_GRANTED_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONAL_CAP_FIELD_NUMBER: _ClassVar[int]
    PURCHASED_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    available: int
    held: int
    total: int
    promotional_granted: int
    promotional_cap: int
    purchased: int
    consumed: int
    tenant: str
    def __init__(self, account_id: _Optional[str] = ..., available: _Optional[int] = ..., held: _Optional[int] = ..., total: _Optional[int] = ..., promotional_granted: _Optional[int] = ..., promotional_cap: _Optional[int] = ..., purchased: _Optional[int] = ..., consumed: _Optional[int] = ..., tenant: _Optional[str] = ...) -> None: ...

class Hold(_message.Message):
    __slots__ = ("hold_id", "account_id", "amount", "captured_amount", "status", "memo", "create_time", "expire_time", "resolve_time", "tenant")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    account_id: str
    amount: int
    captured_amount: int
    status: HoldStatus
    memo: str
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    resolve_time: _timestamp_pb2.Timestamp
    tenant: str
    def __init__(self, hold_id: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[int] = ..., captured_amount: _Optional[int] = ..., status: _Optional[_Union[HoldStatus, str]] = ..., memo: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("entry_id", "account_id", "kind", "available_delta", "held_delta", "available_after", "held_after", "hold_id", "memo", "create_time", "tenant")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_DELTA_FIELD_NUMBER: _ClassVar[int]
    HELD_DELTA_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AFTER_FIELD_NUMBER: _ClassVar[int]
    HELD_AFTER_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    account_id: str
    kind: EntryKind
    available_delta: int
    held_delta: int
    available_after: int
    held_after: int
    hold_id: str
    memo: str
    create_time: _timestamp_pb2.Timestamp
    tenant: str
    def __init__(self, entry_id: _Optional[str] = ..., account_id: _Optional[str] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., available_delta: _Optional[int] = ..., held_delta: _Optional[int] = ..., available_after: _Optional[int] = ..., held_after: _Optional[int] = ..., hold_id: _Optional[str] = ..., memo: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ...) -> None: ...

class OpenAccountRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key", "tenant")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    tenant: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class OpenAccountResponse(_message.Message):
    __slots__ = ("balance", "granted", "replayed", "outcome")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    balance: Balance
    granted: int
    replayed: bool
    outcome: GrantOutcome
    def __init__(self, balance: _Optional[_Union[Balance, _Mapping]] = ..., granted: _Optional[int] = ..., replayed: _Optional[bool] = ..., outcome: _Optional[_Union[GrantOutcome, str]] = ...) -> None: ...

class CheckInRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key", "tenant")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    tenant: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("balance", "granted", "iso_week", "cap_reached", "replayed", "outcome")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    ISO_WEEK_FIELD_NUMBER: _ClassVar[int]
    CAP_REACHED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    balance: Balance
    granted: int
    iso_week: str
    cap_reached: bool
    replayed: bool
    outcome: GrantOutcome
    def __init__(self, balance: _Optional[_Union[Balance, _Mapping]] = ..., granted: _Optional[int] = ..., iso_week: _Optional[str] = ..., cap_reached: _Optional[bool] = ..., replayed: _Optional[bool] = ..., outcome: _Optional[_Union[GrantOutcome, str]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id", "tenant")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    tenant: str
    def __init__(self, account_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("balance",)
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    balance: Balance
    def __init__(self, balance: _Optional[_Union[Balance, _Mapping]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("account_id", "amount", "ttl_seconds", "idempotency_key", "memo", "tenant")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    ttl_seconds: int
    idempotency_key: str
    memo: str
    tenant: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., memo: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("hold", "balance", "replayed")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    balance: Balance
    replayed: bool
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("hold_id", "amount", "idempotency_key", "tenant")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    amount: int
    idempotency_key: str
    tenant: str
    def __init__(self, hold_id: _Optional[str] = ..., amount: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class CaptureResponse(_message.Message):
    __slots__ = ("hold", "balance", "replayed")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    balance: Balance
    replayed: bool
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("hold_id", "idempotency_key", "tenant")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    idempotency_key: str
    tenant: str
    def __init__(self, hold_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("hold", "balance", "replayed")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    balance: Balance
    replayed: bool
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("account_id", "amount", "kind", "reason", "idempotency_key", "tenant")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    kind: GrantKind
    reason: str
    idempotency_key: str
    tenant: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., kind: _Optional[_Union[GrantKind, str]] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class GrantResponse(_message.Message):
    __slots__ = ("entry", "balance", "replayed")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    balance: Balance
    replayed: bool
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("account_id", "start_time", "end_time", "kinds", "page_size", "page_token", "tenant")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    kinds: _containers.RepeatedScalarFieldContainer[EntryKind]
    page_size: int
    page_token: str
    tenant: str
    def __init__(self, account_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kinds: _Optional[_Iterable[_Union[EntryKind, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
