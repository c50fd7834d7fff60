"""The keyword index on Elasticsearch, through the official client, for a knowledge base shared by many bots.

Each build is an index `<name>-<build_id>` filled with the bulk helpers; the alias `<name>` is
moved to it in one `update_aliases` call (remove and add together, atomic on the cluster), so a
rebuild never leaves the bot without an index; the indices the alias left are deleted after.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from supportflow.errors import KnowledgeBaseError
from supportflow.kb.documents import Passage
from supportflow.kb.index import TITLE_BOOST, KeywordHit

MAPPINGS = {
    "properties": {
        "id": {"type": "keyword"},
        "title": {"type": "text", "analyzer": "english"},
        "body": {"type": "text", "analyzer": "english"},
    }
}


class ElasticsearchIndex:
    def __init__(self, url: str, name: str = "kb", timeout_s: float = 10.0) -> None:
        from elasticsearch import Elasticsearch

        self.url = url
        self.name = name
        self.client = Elasticsearch(url, request_timeout=timeout_s)
        self._call(self.client.info)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        try:
            return method(*args, **kwargs)
        except (ApiError, TransportError) as error:
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: {type(error).__name__}: {error}") from error

    def _index_name(self, build_id: str) -> str:
        return f"{self.name}-{build_id}"

    def create(self, build_id: str, passages: Sequence[Passage]) -> None:
        from elasticsearch import helpers

        index = self._index_name(build_id)
        if self._call(self.client.indices.exists, index=index):
            self._call(self.client.indices.delete, index=index)
        self._call(self.client.indices.create, index=index, settings={"number_of_shards": 1}, mappings=MAPPINGS)

        def actions() -> Iterator[dict[str, Any]]:
            for passage in passages:
                yield {"_index": index, "_id": passage.id, "_source": {"id": passage.id, "title": passage.title, "body": passage.body}}

        indexed, errors = self._call(helpers.bulk, self.client, actions(), raise_on_error=False, refresh="wait_for")
        if errors:
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: {len(errors)} passages failed to index into {index}, e.g. {errors[0]}")
        if indexed != len(passages):
            raise KnowledgeBaseError(f"Elasticsearch at {self.url}: indexed {indexed} of {len(passages)} passages into {index}")

    def search(self, query: str, limit: int, build_id: str | None = None) -> list[KeywordHit]:
        index = self._index_name(build_id) if build_id else self.name
        if not query.strip():
            return []
        response = self._call(
            self.client.search,
            index=index,
            size=limit,
            query={"multi_match": {"query": query, "fields": [f"title^{TITLE_BOOST}", "body"], "type": "most_fields"}},
            source=["id"],
        )
        return [KeywordHit(passage_id=hit["_source"]["id"], score=float(hit["_score"])) for hit in response["hits"]["hits"]]

    def promote(self, build_id: str) -> None:
        index = self._index_name(build_id)
        old = [name for name in self._aliased() if name != index]
        actions = [{"remove": {"index": name, "alias": self.name}} for name in old] + [{"add": {"index": index, "alias": self.name}}]
        self._call(self.client.indices.update_aliases, actions=actions)
        for version in self.versions():
            if version != build_id:
                self.discard(version)

    def _aliased(self) -> list[str]:
        if not self._call(self.client.indices.exists_alias, name=self.name):
            return []
        return sorted(self._call(self.client.indices.get_alias, name=self.name).body)

    def discard(self, build_id: str) -> None:
        self._call(self.client.indices.delete, index=self._index_name(build_id), ignore_unavailable=True)

    def serving(self) -> str | None:
        aliased = self._aliased()
        return aliased[0][len(self.name) + 1 :] if aliased else None

    def versions(self) -> list[str]:
        found = self._call(self.client.indices.get, index=f"{self.name}-*", allow_no_indices=True, expand_wildcards="open")
        return sorted(name[len(self.name) + 1 :] for name in found.body)
