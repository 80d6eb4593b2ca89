*** Settings ***
Documentation       Smoke test of fleettrace through the commands a user types: migrate the
...                 database, start a worker in the background, let an agent record LLM calls,
...                 see them with ``fleettrace traces list --json`` and the live figures with
...                 ``fleettrace metrics --json``, then stop the worker with SIGTERM.
...                 Servers and namespace come from FLEETTRACE_REDIS_URL, FLEETTRACE_DATABASE_URL
...                 and FLEETTRACE_NAMESPACE, fresh for this run and removed after it.
Library             Process
Library             Collections
Library             fleet.py
Suite Setup         Prepare The Run
Suite Teardown      Clean Up The Run
Test Timeout        3 minutes


*** Variables ***
${PLAN}         robot-plan
${CALLS}        12


*** Test Cases ***
Migrating Creates The Schema And Is Safe To Repeat
    ${first}=    Run Fleettrace    migrate
    Should Contain    ${first.stdout}    applied 0001_initial
    ${second}=    Run Fleettrace    migrate
    Should Not Contain    ${second.stdout}    applied 0001_initial

A Worker In The Background Stores What An Agent Records
    Start Process    ${FLEETTRACE}    worker    alias=worker
    ...    stdout=${OUTPUT DIR}/worker.out    stderr=${OUTPUT DIR}/worker.err
    ${agent}=    Run Process    ${PYTHON}    ${CURDIR}/agent.py    --plan    ${PLAN}
    ...    --calls    ${CALLS}    timeout=60s    on_timeout=kill
    Should Be Equal As Integers    ${agent.rc}    0    agent failed: ${agent.stderr}
    ${recorded}=    Parse Json    ${agent.stdout}
    Set Suite Variable    ${RECORDED}    ${recorded}
    Wait Until Keyword Succeeds    60s    500ms    Traces Of The Plan Are Listed    ${recorded}

One Call Can Be Shown And The Plan's Cost Adds Up
    ${first}=    Set Variable    ${RECORDED}[trace_ids][0]
    ${shown}=    Run Fleettrace    traces    show    ${first}    --json
    ${trace}=    Parse Json    ${shown.stdout}
    Should Be Equal    ${trace}[trace_id]    ${first}
    Should Be Equal    ${trace}[plan_id]    ${PLAN}
    ${summary}=    Run Fleettrace    traces    cost    --plan    ${PLAN}    --by    model    --json
    ${listing}=    Parse Json    ${summary.stdout}
    Cost Summary Should Add Up To    ${listing}[items]    ${RECORDED}

The Live Metrics Show The Recorded Calls
    ${metrics}=    Run Fleettrace    metrics    --json
    ${listing}=    Parse Json    ${metrics.stdout}
    ${figures}=    Set Variable    ${listing}[items]
    Token Usage Should Add Up To    ${figures}    prompt    ${RECORDED}[prompt_tokens]
    Token Usage Should Add Up To    ${figures}    completion    ${RECORDED}[completion_tokens]
    LLM Errors Should Add Up To    ${figures}    ${RECORDED}[errors]

The Worker Reports Itself Ready To A Health Probe
    Process Should Be Running    worker
    Wait Until Keyword Succeeds    30s    500ms    Run Fleettrace    worker    --check

The Worker Stops Cleanly On SIGTERM
    Process Should Be Running    worker
    Send Signal To Process    SIGTERM    worker
    ${result}=    Wait For Process    worker    timeout=30s    on_timeout=kill
    Should Be Equal As Integers    ${result.rc}    0    worker exited ${result.rc}: ${result.stderr}


*** Keywords ***
Prepare The Run
    Use A Fresh Namespace And Database
    ${fleettrace}=    Fleettrace Command
    ${python}=    Python Command
    Set Suite Variable    ${FLEETTRACE}    ${fleettrace}
    Set Suite Variable    ${PYTHON}    ${python}

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

Traces Of The Plan Are Listed
    [Arguments]    ${recorded}
    ${listing}=    Run Fleettrace    traces    list    --plan    ${PLAN}    --limit    100    --json
    ${traces}=    Parse Json    ${listing.stdout}
    ${ids}=    Trace Ids Of    ${traces}
    Lists Should Be Equal    ${ids}    ${recorded}[trace_ids]    ignore_order=True
    Should Be True    ${recorded}[delivered]
