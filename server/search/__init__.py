"""Search (reference §8): index any document and query it; a capability of its own."""

from .handlers import SEARCH_HANDLERS, document_publisher
from .store import SEARCH_FILE, SearchStore

__all__ = ["SEARCH_FILE", "SEARCH_HANDLERS", "SearchStore", "document_publisher"]
