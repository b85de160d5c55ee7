"""The publisher key format: recognisable, checksummed, never stored in clear."""

from networks import keys


def test_generated_keys_are_prefixed_unique_and_well_formed():
    generated = {keys.generate_key() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert key.startswith("kdj_")
        assert len(key) == 40
        assert keys.is_well_formed(key)


def test_a_single_typo_breaks_the_checksum():
    key = keys.generate_key()
    position = 10
    replacement = "A" if key[position] != "A" else "B"
    typo = key[:position] + replacement + key[position + 1 :]
    assert not keys.is_well_formed(typo)
    assert not keys.is_well_formed(key[:-1])
    assert not keys.is_well_formed(key + "x")


def test_strings_without_the_prefix_are_left_to_the_lookup():
    assert keys.is_well_formed("my-old-katie-dj-key")


def test_display_prefix_never_reveals_a_usable_key():
    key = keys.generate_key()
    assert keys.display_prefix(key) == key[:12]
    assert len(keys.display_prefix("short-legacy")) <= len("short-legacy") // 3


def test_hash_is_stable_and_not_the_key():
    key = keys.generate_key()
    assert keys.hash_key(key) == keys.hash_key(key)
    assert key not in keys.hash_key(key)
    assert len(keys.hash_key(key)) == 64
