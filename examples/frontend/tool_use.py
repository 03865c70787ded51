"""Control flow: choose a tool with a constrained choice, then branch on it."""

from _backend import connect

from sglang import assistant, function, gen


@function
def tool_use(s, question):
    s += assistant(
        "To answer this question: "
        + question
        + ". I need to use a "
        + gen("tool", choices=["calculator", "search engine"])
        + ". "
    )
    if s["tool"] == "calculator":
        s += assistant("The math expression is" + gen("expression"))
    elif s["tool"] == "search engine":
        s += assistant("The key word to search is" + gen("word"))


if __name__ == "__main__":
    connect()
    state = tool_use.run(question="What is 257 times 983?")
    print("tool:", state["tool"])
    print(state.text())
