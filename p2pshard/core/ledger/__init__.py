"""The ledger as a sans-IO state machine (specs/ledger.md): accounts, the validator set, signed
and system operations, round settlement and the state root. No I/O, no clock, no floats; the
SQLite store that keeps what it decides is :mod:`p2pshard.ledger`."""

from p2pshard.core.ledger.ops import (
    Fee,
    Op,
    Reward,
    RoundBlock,
    SignedOp,
    Slash,
    StakeChange,
    SystemOp,
    Transfer,
    decode_op,
    decode_round,
    decode_stake,
    decode_transfer,
    encode_round,
)
from p2pshard.core.ledger.state import (
    CREDIT,
    Account,
    LedgerParams,
    LedgerState,
    StateDecodeError,
    decode_state,
    encode_state,
    genesis,
    state_root,
)
from p2pshard.core.ledger.transitions import Settled, apply_signed, apply_transaction, settle, transition

__all__ = [
    "CREDIT",
    "Account",
    "Fee",
    "LedgerParams",
    "LedgerState",
    "Op",
    "Reward",
    "RoundBlock",
    "Settled",
    "SignedOp",
    "Slash",
    "StakeChange",
    "StateDecodeError",
    "SystemOp",
    "Transfer",
    "apply_signed",
    "apply_transaction",
    "decode_op",
    "decode_round",
    "decode_stake",
    "decode_state",
    "decode_transfer",
    "encode_round",
    "encode_state",
    "genesis",
    "settle",
    "state_root",
    "transition",
]
