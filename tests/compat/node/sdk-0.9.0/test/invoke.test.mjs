import * as adapter from '../adapter.mjs';
import { invokeSuite } from '../../lib/suites/invoke.mjs';

invokeSuite(adapter);
