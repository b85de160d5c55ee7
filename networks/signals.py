"""Keep the publish-path cache true: drop entries when keys or networks change."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from .lookup_cache import forget
from .models import ApiKey, Network
from .selectors import api_key_cache_key, network_cache_key


def _forget_after_commit(*cache_keys: str) -> None:
    # Now, so this process stops using the entry at once; and after commit, in case a reader
    # re-cached the old row in between.
    keys = list(cache_keys)
    forget(keys)
    transaction.on_commit(lambda: forget(keys))


@receiver(post_save, sender=ApiKey)
@receiver(post_delete, sender=ApiKey)
def forget_api_key(sender: type, instance: ApiKey, **kwargs: object) -> None:
    _forget_after_commit(api_key_cache_key(instance.hashed_secret))


@receiver(m2m_changed, sender=ApiKey.networks.through)
def forget_api_key_scopes(
    sender: type, instance: object, action: str, pk_set: set[int] | None, **kwargs: object
) -> None:
    if isinstance(instance, ApiKey):
        _forget_after_commit(api_key_cache_key(instance.hashed_secret))
        return
    # Changed from the network's side: find the keys concerned.
    if action in ("post_add", "post_remove") and pk_set:
        affected = ApiKey.objects.filter(pk__in=pk_set)
    elif action == "pre_clear":
        affected = ApiKey.objects.filter(networks=instance)
    else:
        return
    hashes = affected.values_list("hashed_secret", flat=True)
    _forget_after_commit(*(api_key_cache_key(h) for h in hashes))


@receiver(pre_save, sender=Network)
def remember_previous_slug(sender: type, instance: Network, **kwargs: object) -> None:
    # A renamed network must also vanish from the cache under its old slug.
    if instance.pk is not None:
        previous = Network.objects.filter(pk=instance.pk).values_list("slug", flat=True).first()
        instance._previous_slug = previous  # type: ignore[attr-defined]


@receiver(post_save, sender=Network)
@receiver(post_delete, sender=Network)
def forget_network(sender: type, instance: Network, **kwargs: object) -> None:
    slugs = {instance.slug, getattr(instance, "_previous_slug", None) or instance.slug}
    _forget_after_commit(*(network_cache_key(slug) for slug in slugs))
