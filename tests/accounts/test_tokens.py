"""Secret formats: recognisable, checksummed, never stored in clear."""

import pytest

from accounts.tokens import PERSONAL_TOKEN, PUBLISHER_KEY, hash_secret


@pytest.mark.parametrize("secret_format", [PUBLISHER_KEY, PERSONAL_TOKEN])
def test_generated_secrets_are_prefixed_unique_and_valid(secret_format):
    generated = {secret_format.generate() for _ in range(200)}
    assert len(generated) == 200
    for secret in generated:
        assert secret.startswith(secret_format.prefix)
        assert len(secret) == secret_format.length
        assert secret_format.is_valid(secret)


def test_a_single_typo_breaks_the_checksum():
    key = PUBLISHER_KEY.generate()
    position = 10
    replacement = "A" if key[position] != "A" else "B"
    typo = key[:position] + replacement + key[position + 1 :]
    assert not PUBLISHER_KEY.is_valid(typo)
    assert not PUBLISHER_KEY.is_valid(key[:-1])
    assert not PUBLISHER_KEY.is_valid(key + "x")


def test_formats_do_not_accept_each_other():
    assert not PUBLISHER_KEY.is_valid(PERSONAL_TOKEN.generate())
    assert not PERSONAL_TOKEN.is_valid(PUBLISHER_KEY.generate())


def test_strings_without_the_prefix_are_not_claimed():
    assert not PUBLISHER_KEY.claims("my-old-katie-dj-key")


def test_display_prefix_never_reveals_a_usable_key():
    key = PUBLISHER_KEY.generate()
    assert PUBLISHER_KEY.display_prefix(key) == key[:12]
    assert len(PUBLISHER_KEY.display_prefix("short-legacy")) <= len("short-legacy") // 3


def test_hash_is_stable_and_not_the_secret():
    key = PUBLISHER_KEY.generate()
    assert hash_secret(key) == hash_secret(key)
    assert key not in hash_secret(key)
    assert len(hash_secret(key)) == 64
