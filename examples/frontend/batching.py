"""Batching: run_batch runs many programs at once; results come back in input order."""

from _backend import connect

from sglang import function, gen


@function
def text_qa(s, question):
    s += "Q: " + question + "\n"
    s += "A:" + gen("answer", stop="\n")


if __name__ == "__main__":
    connect()
    states = text_qa.run_batch(
        [
            {"question": "What is the capital of the United Kingdom?"},
            {"question": "What is the capital of France?"},
            {"question": "What is the capital of Japan?"},
        ],
        progress_bar=True,
    )
    for state in states:
        print(state["answer"])
