from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValidateRequest(_message.Message):
    __slots__ = ("order_id", "amount_cents")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    amount_cents: int
    def __init__(self, order_id: _Optional[str] = ..., amount_cents: _Optional[int] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("valid", "reason")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ChargeRequest(_message.Message):
    __slots__ = ("order_id", "amount_cents")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    amount_cents: int
    def __init__(self, order_id: _Optional[str] = ..., amount_cents: _Optional[int] = ...) -> None: ...

class ChargeResponse(_message.Message):
    __slots__ = ("charge_id",)
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    def __init__(self, charge_id: _Optional[str] = ...) -> None: ...

class ShipRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class ShipResponse(_message.Message):
    __slots__ = ("tracking_number",)
    TRACKING_NUMBER_FIELD_NUMBER: _ClassVar[int]
    tracking_number: str
    def __init__(self, tracking_number: _Optional[str] = ...) -> None: ...

class GetCallCountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CallCount(_message.Message):
    __slots__ = ("method", "idempotency_key", "count", "cancelled")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    method: str
    idempotency_key: str
    count: int
    cancelled: int
    def __init__(self, method: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., count: _Optional[int] = ..., cancelled: _Optional[int] = ...) -> None: ...

class GetCallCountsResponse(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[CallCount]
    def __init__(self, counts: _Optional[_Iterable[_Union[CallCount, _Mapping]]] = ...) -> None: ...

class ResetCallCountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetCallCountsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetDelayRequest(_message.Message):
    __slots__ = ("method", "delay_ms")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    method: str
    delay_ms: int
    def __init__(self, method: _Optional[str] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class SetDelayResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
