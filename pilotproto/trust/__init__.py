"""Private-by-default trust: the node's trust store and the handshake/approve/revoke flow."""

from .manager import TrustManager
from .store import TrustStore

__all__ = ["TrustManager", "TrustStore"]
