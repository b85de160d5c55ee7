"""KatieDJ listener SDK: receive published samples over WebSocket, reconnecting as needed."""

from katiedj_client.listener import Listener, ListenerRejected, backoff_delays

__all__ = ["Listener", "ListenerRejected", "backoff_delays"]
