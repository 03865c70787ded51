"""Roles with explicit begin/end markers and a context manager."""

from _backend import connect

from sglang import assistant_begin, assistant_end, function, gen, system


@function
def chat_example(s):
    s += system("You are a helpful assistant.")
    # Same as: s += s.system("You are a helpful assistant.")

    with s.user():
        s += "Question: What is the capital of France?"

    s += assistant_begin()
    s += "Answer: " + gen(max_tokens=100, stop="\n")
    s += assistant_end()


if __name__ == "__main__":
    connect()
    state = chat_example.run()
    print(state.text())
    print(state.messages())
