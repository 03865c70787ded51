"""Streaming: print the text as it is generated."""

from _backend import connect

from sglang import function, gen


@function
def text_qa(s, question):
    s += "Q: " + question + "\n"
    s += "A:" + gen("answer", stop="\n")


if __name__ == "__main__":
    connect()
    state = text_qa.run(
        question="What is the capital of France?", temperature=0.1, stream=True
    )
    for out in state.text_iter():
        print(out, end="", flush=True)
    print()
