from schemas import keys


def test_every_key_is_namespaced_and_distinct() -> None:
    names = [
        keys.job_stream("m"),
        keys.job_record("j"),
        keys.job_image("j"),
        keys.gateway_channel("g"),
        keys.model_workers("m"),
        keys.worker_info("w"),
        keys.MODEL_REGISTRY,
        keys.MODEL_FAILURES,
        keys.LIVE_WORKERS,
        keys.idempotency("p", "k"),
    ]
    assert all(name.startswith(keys.PREFIX + ":") for name in names)
    assert len(set(names)) == len(names)


def test_keys_carry_their_ids() -> None:
    assert keys.job_stream("demo-lesions").endswith(":demo-lesions")
    assert keys.job_record("abc") != keys.job_image("abc")
