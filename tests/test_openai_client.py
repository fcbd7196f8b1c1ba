"""The official `openai` Python client against the real server (uvicorn on a free
127.0.0.1 port): completions streamed and not, top_k through extra_body, stop strings,
usage, the model list, and `n` other than 1 refused with a message saying so. Skipped with
the reason without openai (the dev extra) or fastapi/uvicorn (the serve extra)."""

import pytest

openai = pytest.importorskip("openai", reason="openai not installed (pip install openai, or "
                                              "the dev extra)")
from test_serve import Server, make_model  # noqa: E402  (skips without fastapi, uvicorn)

from tinygrad_char.inference.sampling import generate_text  # noqa: E402
from tinygrad_char.inference.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def served():
    model, tokenizer = make_model()
    server = Server(create_app(model, tokenizer, max_new_tokens_limit=300)).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                           timeout=60)
    yield client, model, tokenizer
    server.stop()


def test_completion(served):
    client, model, tokenizer = served
    out = client.completions.create(model="tinygrad_char", prompt="ROMEO:", max_tokens=30,
                                    temperature=0.8, top_p=0.95, seed=4,
                                    extra_body={"top_k": 12})
    expected = generate_text(model, tokenizer, "ROMEO:", 30, temperature=0.8, top_k=12,
                             top_p=0.95, seed=4)[0]
    assert out.object == "text_completion" and out.model == "tinygrad_char"
    assert len(out.choices) == 1 and out.choices[0].text == expected
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
        (6, 30, 36)


def test_streamed_completion_with_usage(served):
    client, model, tokenizer = served
    stream = client.completions.create(model="tinygrad_char", prompt="to be", max_tokens=150,
                                       temperature=1.0, seed=9, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == generate_text(model, tokenizer, "to be", 150, temperature=1.0, seed=9)[0]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert len([c for c in chunks if c.choices]) > 2, "nothing was streamed"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 150


def test_stop_string_finishes_with_stop(served):
    client, model, tokenizer = served
    full = generate_text(model, tokenizer, "ab", 50, temperature=0)[0]
    stop = full[10:12]
    out = client.completions.create(model="tinygrad_char", prompt="ab", max_tokens=50,
                                    temperature=0, stop=[stop])
    assert out.choices[0].text == full[:full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_n_other_than_one_is_refused_saying_so(served):
    client, _, _ = served
    with pytest.raises(openai.UnprocessableEntityError, match="only n = 1 is supported"):
        client.completions.create(model="tinygrad_char", prompt="a", max_tokens=5, n=2)


def test_bad_field_is_a_4xx_naming_it(served):
    client, _, _ = served
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.completions.create(model="tinygrad_char", prompt="a", temperature=-1)


def test_model_list(served):
    client, _, _ = served
    assert [m.id for m in client.models.list()] == ["tinygrad_char"]
