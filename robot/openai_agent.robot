*** Settings ***
Documentation       An agent that uses the OpenAI client records its calls with no fleettrace
...                 code around them but one wrap: ``robot/openai_agent.py`` runs against a
...                 local OpenAI-compatible server (``python -m tests.llm_servers``), a
...                 ``fleettrace worker --burst`` stores what it sent, and
...                 ``fleettrace traces list --json`` shows every call as the client saw it.
Library             Process
Library             OperatingSystem
Library             fleet.py
Library             integrations.py
Suite Setup         Prepare The Run
Suite Teardown      Clean Up The Run
Test Timeout        3 minutes


*** Variables ***
${CALLS}        6


*** Test Cases ***
An Agent Using The OpenAI Client Records Its Calls With One Wrap
    ${agent}=    Run Process    ${PYTHON}    ${CURDIR}/openai_agent.py    --base-url    ${BASE URL}
    ...    --calls    ${CALLS}    timeout=60s    on_timeout=kill
    Should Be Equal As Integers    ${agent.rc}    0    agent failed: ${agent.stderr}
    ${answered}=    Parse Json    ${agent.stdout}
    Run Fleettrace    worker    --burst
    ${listing}=    Run Fleettrace    traces    list    --limit    100    --json
    ${stored}=    Parse Json    ${listing.stdout}
    Stored Calls Should Match The Answers    ${stored}    ${answered}


*** Keywords ***
Prepare The Run
    Use A Fresh Namespace And Database
    ${fleettrace}=    Fleettrace Command
    ${python}=    Python Command
    Set Suite Variable    ${FLEETTRACE}    ${fleettrace}
    Set Suite Variable    ${PYTHON}    ${python}
    Run Fleettrace    migrate
    Start Process    ${PYTHON}    -m    tests.llm_servers    cwd=${CURDIR}/..    alias=llm_server
    ...    stdout=${OUTPUT DIR}/llm_server.out    stderr=${OUTPUT DIR}/llm_server.err
    Wait Until Keyword Succeeds    30s    200ms    The LLM Server Has Started

The LLM Server Has Started
    ${out}=    Get File    ${OUTPUT DIR}/llm_server.out
    Should Match Regexp    ${out}    ^http://127\\.0\\.0\\.1:\\d+/v1
    ${url}=    Evaluate    $out.strip()
    Set Suite Variable    ${BASE URL}    ${url}

Clean Up The Run
    Terminate All Processes    kill=True
    Remove The Namespace And Database

Run Fleettrace
    [Documentation]    Run one fleettrace command to its end; it must exit 0.
    [Arguments]    @{arguments}
    ${result}=    Run Process    ${FLEETTRACE}    @{arguments}    timeout=60s    on_timeout=kill
    Should Be Equal As Integers    ${result.rc}    0
    ...    fleettrace ${arguments} exited ${result.rc}: ${result.stderr}
    RETURN    ${result}
